/* lua_drive.h: the Driver userdata ("retry.Driver") of retry.core: a
 * closed-model load's requests run in C.
 *
 * `lretry load`'s own client, and retry.load's with a url and no client,
 * send one request over and over with a policy that depends on a
 * response's status alone (loop.lua's plain path). A request whose
 * attempts end in responses that policy retries or lets stand needs no Lua
 * task: the driver runs `slots` such requests at a time on the loop,
 * retries with the strategy's waits when they depend on the attempt's
 * number alone, starts each slot's next request as the last one ends, and
 * keeps the load's figures for them (the recorder's histograms directly,
 * the counts as a tally the load's task adds to its recorder). Everything
 * else goes back to that task as an event, the slot lent to Lua until it
 * is freed: an error, a Retry-After, a status the driver has not been told
 * about (`learn`), a retry whose wait Lua computes. Lua runs for a standing
 * response only to call the load's check function (in a task of its own,
 * so that the check may wait as any other can), and not at all for a
 * check by status codes. README "Performance".
 *
 * The Lua side, load.lua's driven worker (the only user):
 *   core.driver(request, opts) -> driver, owned by the calling task
 *   d:next() -> event, ...   parks the owner until there is one; nil once
 *                            every request has ended
 *   d:stop()                 start no more requests
 *   d:cancel()               stop, and cut the requests in flight or
 *                            waiting between attempts
 *   d:free(slot)             a lent slot is back: it starts the next request
 *   d:learn(status, stands)  whether a response of status ends a request
 * See lua_drive.c for the events and the options.
 */
#ifndef RT_LUA_DRIVE_H
#define RT_LUA_DRIVE_H

#include <lua.h>

#include "task.h"
#include "transfer.h"

/* Register the metatable. */
void rt_drive_open(lua_State *L);

/* Make a driver for req (checked, copied: nothing of it is kept) with the
 * options table at opts_idx, owned by task t, and push it. sealed points
 * at the state's seal flag (core.seal): no request starts once it is set. */
void rt_drive_new(lua_State *L, const rt_request_t *req, int opts_idx,
                  rt_task_t *t, rt_loop_t *loop, const int *sealed);

#endif
