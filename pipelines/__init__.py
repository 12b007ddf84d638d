"""A call's VoicePipelineConfig as livekit-agents components (docs/pipeline-config.md).

providers: the provider registry; validate: config problems; vad: the shared Silero model;
turn_handling: endpointing and turn detection; builder: the session's components;
call_limits: maximum duration and silence timeout on a live session.
"""
