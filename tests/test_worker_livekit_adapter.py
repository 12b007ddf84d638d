"""Guard: what voice-worker's two adapter modules rely on in livekit-agents' internals is still there
(tests/test_livekit_internals.py checks that these are the only reaches).

When one of these fails after a livekit-agents upgrade, do not patch the test: read the new
`AgentServer._answer_availability` / `_is_available` / `_get_effective_load` / `_update_worker_status`, then either
adapt worker/livekit_adapter.py or, better, move it to the public hooks its docstring names if the new release
has them. tests/test_worker_burst.py checks the resulting behaviour end to end. The same for the speaking-rate
stream that pipelines/speaking_rate.py patches (tests/test_pipelines_speaking_rate.py checks its estimate); that
module leaves livekit's code in place at run time when it no longer fits, and this test is what says so.
"""

from __future__ import annotations

import ast
import inspect
import re

from livekit.agents import AgentServer
from livekit.agents.version import __version__
from livekit.agents.voice.transcription import _speaking_rate, synchronizer

from pipelines import speaking_rate
from worker.livekit_adapter import WRITTEN_FOR, AdmissionAdapter


def _source(name: str) -> str:
    return inspect.getsource(getattr(AgentServer, name))


def _loud(what: str) -> str:
    return (
        f"livekit-agents {__version__} (the adapter was written for {WRITTEN_FOR}) changed {what}: "
        "worker/livekit_adapter.py must be revisited"
    )


def test_the_overridden_methods_exist_with_the_signatures_the_adapter_uses() -> None:
    answer = inspect.signature(AgentServer._answer_availability)
    assert list(answer.parameters) == ["self", "msg", "received_at"], _loud("_answer_availability's parameters")
    assert answer.parameters["received_at"].kind is inspect.Parameter.KEYWORD_ONLY, _loud("received_at")
    assert inspect.iscoroutinefunction(AgentServer._answer_availability), _loud("_answer_availability (not async)")
    assert list(inspect.signature(AgentServer._get_effective_load).parameters) == ["self"], _loud(
        "_get_effective_load's parameters"
    )
    assert list(inspect.signature(AgentServer._is_available).parameters) == ["self"], _loud("_is_available")
    assert inspect.iscoroutinefunction(AgentServer._queue_msg), _loud("_queue_msg")
    for name in ("_answer_availability", "_get_effective_load", "_is_available"):
        assert name in AdmissionAdapter.__dict__, f"the adapter no longer overrides {name}"


def test_offers_are_answered_in_the_order_the_adapter_relies_on() -> None:
    source = _source("_answer_availability")
    # the capacity check comes before the reservation, and the request function (our gate) after both
    check = source.find("if not self._is_available()")
    reserve = source.find("self._reserved_slots += 1")
    request = source.find("await self._request_fnc(")
    assert -1 < check < reserve < request, _loud("the order of check, reservation and request function")
    # the reservation is released once the request function is done (accepted jobs: after launch)
    assert re.search(r"def _on_job_request_done\(.*?\n\s+self\._reserved_slots -= 1", source, re.S), _loud(
        "when a reserved slot is released"
    )
    # a refusal is an AvailabilityResponse with available=False (and terminate) queued on the websocket
    assert "availability_resp.availability.terminate = terminate" in source, _loud("how a refusal is sent")


def test_the_capacity_decision_and_the_status_both_use_the_effective_load() -> None:
    available = _source("_is_available")
    assert "self._draining" in available, _loud("_is_available's drain check")
    assert "self._get_effective_load() < load_threshold" in available, _loud("_is_available's comparison")
    status = _source("_update_worker_status")
    assert "self._get_effective_load()" in status and ">= load_threshold" in status, _loud("the WS_FULL status")
    run = _source("run")
    assert "self._reserved_slots: int = 0" in run, _loud("where _reserved_slots is initialised")


# --- pipelines/speaking_rate.py -------------------------------------------------------------------------------


def _stream_methods() -> dict[str, ast.FunctionDef]:
    """livekit's SpeakingRateStream methods as its source defines them (the class may be patched in this process)."""
    tree = ast.parse(inspect.getsource(_speaking_rate))
    stream = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SpeakingRateStream")
    return {f.name: f for f in stream.body if isinstance(f, ast.FunctionDef)}


def test_the_patched_methods_exist_with_the_parameters_the_patch_takes() -> None:
    methods = _stream_methods()
    for name, params in speaking_rate._EXPECTED.items():
        assert name in methods, _loud(f"SpeakingRateStream.{name} (gone)")
        found = [a.arg for a in methods[name].args.args]
        assert found == params, _loud(f"SpeakingRateStream.{name}'s parameters ({found})")


def test_the_patched_methods_are_on_the_path_of_every_estimate() -> None:
    methods = _stream_methods()
    # the estimate goes through the spectral flux, and the flux through the STFT: replacing both replaces the work
    compute = ast.unparse(methods["_compute_speaking_rate"])
    assert "self._spectral_flux(audio, sample_rate)" in compute, _loud("how the speaking rate is computed")
    flux = ast.unparse(methods["_spectral_flux"])
    assert "self._stft(audio, frame_length, hop_length)" in flux, _loud("how the spectral flux is computed")
    # every synchronizer estimates with livekit's detector, whose streams are this class
    sync = inspect.getsource(synchronizer)
    assert "speaking_rate_detector=SpeakingRateDetector()" in sync, _loud("the synchronizer's detector")
    stream = inspect.getsource(_speaking_rate.SpeakingRateDetector.stream)
    assert "SpeakingRateStream(" in stream, _loud("the detector's stream class")
