"""One call's life: admission, bootstrap, limits, live status, the session record's assembly and the end of the call.

`calls.state.CallState` is the call's state (the `AgentSession.userdata`); `calls.bootstrap.start_call` builds a
call from a verified dispatch; `calls.call.Call` runs it to its end; `calls.outcome` turns it into the session
record. The worker process (worker/) and the console (cli/) drive calls through this package.
"""
