"""The call page: talk to an agent or a team from a browser, served by the door at `/`.

On in dev mode (`voice-worker dev` prints its URL); in production only with `DOOR_CALL_PAGE=true`, for the
platform's own staff. The page is a client of the door like any other: it reads what it may offer from
`GET /call-page/config`, mints with Feather's `POST /v1/voice/web-call` (`x-api-key`), and joins the room with
livekit-client, bundled at build time from web/ into `door/static/call-page.js` (scripts/setup; no CDN).

Which key the page sends: in dev mode without `DOOR_API_KEYS_FILE` the door accepts only the well-known,
public dev key (door/keys.py), so the config hands that one over, exactly like LiveKit's `devkey`. Everywhere
else the config offers no key and the page asks the person for theirs (kept in the tab's sessionStorage only).

The config also says, per agent and team, what would make the worker refuse the call before it starts: a
provider without its API key (by the variable to set) or another pipeline problem, as `voice-worker check`
reports them with this process's settings. The door and the worker of `voice-worker dev` share one
environment; a production door may be configured differently from the workers, so there it is advice. And
whether the pipeline takes keypad digits (`dtmf_enabled`): the page then shows a keypad during the call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from catalog.context_vars import ContextVarSpec
from catalog.loader import Catalog, CatalogStore
from catalog.pipeline_config import VoicePipelineConfig
from door.keys import DEV_API_KEY
from door.settings import DoorSettings

STATIC = Path(__file__).with_name("static")
PAGE = STATIC / "call-page.html"
BUNDLE = STATIC / "call-page.js"
CONFIG_PATH = "/call-page/config"
# Only these files are served from door/static/: the page never exposes a directory listing or other files.
ASSETS = {"call-page.js": "text/javascript", "call-page.js.map": "application/json", "call-page.css": "text/css"}
# The page is HTML, script and style from the door itself, and LiveKit's websocket (any ws/wss origin: the door
# tells the page which). No inline script, no third-party origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_KEY_IN_PROBLEM = re.compile(r"needs an API key: set (\w+)")


def enabled(settings: DoorSettings) -> bool:
    return settings.is_dev or settings.door_call_page


def _variable(spec: ContextVarSpec, default: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": spec.type,
        "description": spec.description,
        "enum_values": list(spec.enum_values) if spec.enum_values else None,
        "max_length": spec.max_length,
        "minimum": spec.minimum,
        "maximum": spec.maximum,
        "default": default,
    }


def readiness(pipeline: VoicePipelineConfig, settings: DoorSettings) -> dict[str, list[str]]:
    """What stops a call on `pipeline` before it starts: API key variables to set, and other problems."""
    missing: list[str] = []
    other: list[str] = []
    # Imported here: the provider registry brings livekit-agents and its plugins (seconds of imports), which a door
    # without the call page (production's default) never needs; `install` loads them once at start instead.
    from pipelines.providers import PROVIDERS
    from pipelines.validate import pipeline_problems

    for problem in pipeline_problems(pipeline, settings, where="pipeline"):
        found = _KEY_IN_PROBLEM.search(problem.reason)
        if found and found.group(1) in {p.key_env for p in PROVIDERS.values()}:
            if found.group(1) not in missing:
                missing.append(found.group(1))
        else:
            other.append(str(problem))
    return {"missing_keys": missing, "problems": other}


def keypad(pipeline: VoicePipelineConfig) -> dict[str, Any]:
    """Whether the page offers its keypad during a call on `pipeline`, and how the worker groups the keys into one
    entry (pipelines/dtmf.py), so the page shows each entry as the agent gets it."""
    if not pipeline.dtmf_enabled:
        return {"dtmf_enabled": False, "dtmf_entry": None}
    return {
        "dtmf_enabled": True,
        "dtmf_entry": {
            "termination_digit": pipeline.dtmf_termination_digit,
            "max_digits": pipeline.dtmf_max_digits,
            "inter_digit_timeout_ms": pipeline.dtmf_inter_digit_timeout_ms,
        },
    }


def page_config(catalog: Catalog, settings: DoorSettings) -> dict[str, Any]:
    agents = []
    for agent in sorted(catalog.agents.values(), key=lambda a: a.name.lower()):
        revision = agent.active_revision
        agents.append(
            {
                "id": str(agent.id),
                "name": agent.name,
                "enabled": agent.enabled,
                "revision": revision.name,
                # `system` variables are set by the worker and refused as seeds: never offered
                "context_variables": [
                    _variable(spec, revision.variable_defaults.get(spec.name))
                    for spec in revision.context_variables
                    if spec.source != "system"
                ],
                **readiness(revision.pipeline, settings),
                **keypad(revision.pipeline),
            }
        )
    teams = []
    for team in sorted(catalog.teams.values(), key=lambda t: t.name.lower()):
        greeter = catalog.agents.get(team.initial_member.assistant_id)
        teams.append(
            {
                "id": str(team.id),
                "name": team.name,
                "enabled": team.enabled and greeter is not None and greeter.enabled,
                "members": [m.router_name for m in team.members if m.enabled],
                **readiness(team.pipeline, settings),
                **keypad(team.pipeline),
            }
        )
    dev_key = settings.is_dev and settings.door_api_keys_file is None
    return {
        "web_call_path": "/v1/voice/web-call",
        "api_key": DEV_API_KEY if dev_key else None,
        "mode": settings.mode.value,
        "agents": agents,
        "teams": teams,
    }


def install(app: FastAPI, settings: DoorSettings, catalog_store: CatalogStore) -> None:
    """Add the page's routes to the door when `enabled(settings)`; otherwise add nothing (404 as before)."""
    if not enabled(settings):
        return
    # the registry's imports at start, not inside the page's first request (see `readiness`)
    import pipelines.validate  # noqa: F401 - loaded for its side effect: the modules are in sys.modules

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=_SECURITY_HEADERS)

    @app.get(CONFIG_PATH, include_in_schema=False)
    async def config() -> JSONResponse:
        catalog = await anyio.to_thread.run_sync(catalog_store.get)
        return JSONResponse(page_config(catalog, settings), headers=_SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        path = STATIC / name
        if media_type is None or not path.is_file():
            raise HTTPException(status_code=404, detail="not found")
        return FileResponse(path, media_type=media_type, headers=_SECURITY_HEADERS)
