"""The composition root of tests/doubles/held_call.py: worker/app.py with the held-call entrypoint."""

from tests.doubles.held_call import held_entrypoint
from worker.server import create_server
from worker.settings import get_settings

server = create_server(get_settings(), session_entrypoint=held_entrypoint)
