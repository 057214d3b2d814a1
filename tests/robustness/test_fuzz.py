"""Fuzz: thousands of generated valid and invalid requests, from docs/openapi.yaml, against a real tiny
TorchServe whose limits are small (tests/robustness/fuzz.py's FUZZ_OVERRIDES), so valid requests are cheap.

What must hold: no 5xx (the one exemption: /wfpredict/pipeline answers a refused request 500, as
documented), no worker restarts, every valid request a 200 whose body validates against the documented
response schema, every invalid one a handler 4xx JSON error whose message starts with the field it
broke (TorchServe's own 400/404/413 name no field: they are counted, by type), and a good request per
endpoint after the storm. The generator is checked against the document too: every valid request it
makes validates against the request schema, every invalid one (but those JSON Schema cannot see:
a box outside the image, a corrupt image) does not.

A new endpoint in docs/openapi.yaml is fuzzed with no change here; a cross-field rule of its request
(that JSON Schema cannot say) goes into fuzz.py's FIXERS. FUZZ_REQUESTS and FUZZ_SEED (environment)
change the count (default 2100) and the Hypothesis seed (default 13); the summary prints both.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from robustness.contract import load_document
from robustness.fuzz import Generator, Probe, fuzz_store, json_objects, message_field, torchserve_probes
from robustness.tools import all_worker_pids

pytestmark = pytest.mark.fuzz

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2100"))
SEED = int(os.environ.get("FUZZ_SEED", "13"))
IN_FLIGHT = 8  # concurrent requests (so bad and good ones share batches)
CLIENT_TIMEOUT = 300  # s; the longest a tiny request may take under the storm
WORKFLOW = "/wfpredict/pipeline"
# how often each endpoint is drawn; the pipeline paths and interpret call every model, so they are drawn less
WEIGHTS = {"/predictions/pipeline": 1, WORKFLOW: 1, "/predictions/interpret": 1}
DEFAULT_WEIGHT = 3
KINDS = ("torchserve",) * 1 + ("valid",) * 10 + ("invalid",) * 13  # drawn uniformly (sampled_from)


@dataclass
class Answer:
    probe: Probe
    status: int | None
    headers: dict[str, str]
    text: str
    error: str | None = None


@dataclass
class Verdict:
    probe: Probe
    status: int | None
    problem: str | None  # why the answer broke the contract
    seen: Counter  # what came back (for the summary)


@pytest.fixture(scope="module")
def fuzz_server(model_store, tmp_path_factory):
    """A TorchServe of its own with the fuzz limits: the session's archives with their yaml rewritten."""
    from server import TorchServe

    document = load_document()
    names = [path.removeprefix("/predictions/") for path in document["paths"] if path.startswith("/predictions/")]
    names = [name for name in names if (model_store / f"{name}.mar").exists()]
    store = tmp_path_factory.mktemp("fuzz") / "model_store"
    limits = fuzz_store(model_store, store, names)
    ts = TorchServe(tmp_path_factory.mktemp("fuzz-run"), store).start()
    try:
        for name in names:
            ts.register(name)
        workflow = (store / "pipeline.war").exists()
        if workflow:
            ts.register("pipeline", workflow=True)
        yield ts, names, limits, workflow
    finally:
        ts.stop()


def send(server, probe: Probe, session: requests.Session) -> Answer:
    headers = dict(probe.headers)
    if probe.token != "":
        headers["Authorization"] = f"Bearer {probe.token if probe.token is not None else server.token('inference')}"
    kwargs: dict[str, Any] = {"headers": headers, "timeout": CLIENT_TIMEOUT}
    if probe.json is not None:
        kwargs["json"] = probe.json
    elif probe.data is not None:
        kwargs["data"] = probe.data
    try:
        response = session.request(probe.method, server.url("inference") + probe.path, **kwargs)
    except requests.RequestException as exc:
        return Answer(probe, None, {}, "", error=f"{type(exc).__name__}: {exc}")
    return Answer(probe, response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.text)


def judge(generator: Generator, answer: Answer, seen: Counter) -> str | None:
    """Why this answer breaks the contract, or None; ``seen`` counts what came back."""
    probe, status = answer.probe, answer.status
    if status is None:
        return f"no answer: {answer.error}"
    try:
        objects = json_objects(answer.text)
    except ValueError:
        return f"HTTP {status}, not JSON: {answer.text[:200]!r}"
    body = objects[-1] if objects else None
    if status >= 400:
        if not isinstance(body, dict) or not {"code", "type", "message"} <= set(body):
            return f"HTTP {status} without the error body: {answer.text[:200]!r}"
        if body["code"] != status:
            return f"HTTP {status} with code {body['code']}"
    if probe.path.startswith(WORKFLOW) and (probe.kind != "torchserve" or status == 500):
        # (TorchServe 0.12 ignores a version on /wfpredict/<name>/<version>: the workflow itself refuses)
        if probe.kind == "valid" or (probe.kind == "maybe" and status == 200):
            return _valid(generator, answer, objects)
        seen[f"workflow {status}"] += 1
        return None if status >= 400 else f"HTTP {status} to a request it should refuse"
    if status >= 500:
        return f"HTTP {status}: {answer.text[:300]}"
    if probe.kind == "torchserve":
        if not 400 <= status < 500:
            return f"HTTP {status}, expected TorchServe to refuse it"
        seen[_origin(body, status)] += 1
        return None
    if probe.kind == "valid" or (probe.kind == "maybe" and status == 200):
        return _valid(generator, answer, objects)
    if status == 200:
        return "HTTP 200 to an invalid request"
    if "request_id" not in body:  # TorchServe answered before the handler saw it
        seen[_origin(body, status)] += 1
        return None
    seen[f"handler {status} {body['type']}"] += 1
    if probe.status and status != probe.status:
        return f"HTTP {status}, expected {probe.status}: {body['message'][:200]}"
    named, stage = message_field(body["message"], probe.path)
    if named not in (probe.fields or (probe.field,)):
        return f"message names {named!r}, not {probe.fields or probe.field}: {body['message'][:200]!r}"
    if stage:
        seen[f"pipeline 4xx from stage {stage}"] += 1
    return None


def _origin(body: dict[str, Any], status: int) -> str:
    who = "handler" if "request_id" in body else "TorchServe"
    return f"{who} {status} {body.get('type')}"


def _valid(generator: Generator, answer: Answer, objects: list[Any]) -> str | None:
    probe = answer.probe
    if answer.status != 200:
        return f"HTTP {answer.status} to a valid request: {answer.text[:300]}"
    if not objects:
        return "HTTP 200 with an empty body"
    final, events = objects[-1], objects[:-1]
    errors = generator.schema_errors(generator.response_pointer(probe.path), final)
    if errors:
        return f"the answer does not match {generator.response_pointer(probe.path)}: {errors[:3]}"
    event_schema = generator.event_pointer(probe.path)
    if events and (event_schema is None or probe.json is None or not probe.json.get("stream")):
        return f"{len(events)} stream events to a request that did not ask for them"
    for event in events:
        errors = generator.schema_errors(event_schema, event)
        if errors:
            return f"a stream event does not match {event_schema}: {errors[:3]}"
    if probe.path.startswith("/predictions/"):
        if final.get("request_id") != answer.headers.get("x-request-id"):
            return f"request_id {final.get('request_id')} != x-request-id {answer.headers.get('x-request-id')}"
        # a streamed answer's headers leave with its first event, before the batch is known
        if not events and not answer.headers.get("x-batch-size", "").isdigit():
            return f"x-batch-size header {answer.headers.get('x-batch-size')!r}"
    return None


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (the frontend and every worker), for the summary."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def generator_problem(generator: Generator, probe: Probe) -> str | None:
    """The generator's own claim about the request schema (valid / invalid) must be the schema's."""
    if probe.schema_invalid is None or probe.json is None:
        return None
    errors = generator.schema_errors(generator.request_pointer(probe.path), probe.json)
    if probe.schema_invalid and not errors:
        return "the request schema accepts this invalid request"
    if not probe.schema_invalid and errors:
        return f"the request schema refuses this valid request: {errors[:3]}"
    return None


def probes(generator: Generator, paths: list[str]) -> st.SearchStrategy[Probe]:
    weighted = [path for path in paths for _ in range(WEIGHTS.get(path, DEFAULT_WEIGHT))]

    @st.composite
    def one(draw: Any) -> Probe:
        kind = draw(st.sampled_from(KINDS))
        if kind == "torchserve":
            return draw(torchserve_probes(paths))
        path = draw(st.sampled_from(weighted))
        return generator.valid(draw, path) if kind == "valid" else generator.invalid(draw, path)

    return one()


def test_fuzzed_requests_get_200_or_a_4xx_naming_the_field_and_restart_nothing(fuzz_server):
    server, names, limits, workflow = fuzz_server
    document = load_document()
    sd_config = limits.get("sd")
    assert sd_config is not None, "the fuzz server serves sd"
    from robustness.fuzz import FUZZ_OVERRIDES

    sd_handler = FUZZ_OVERRIDES["sd"]["handler"]
    generator = Generator(document, limits, (sd_handler["width"], sd_handler["height"]))
    paths = [f"/predictions/{name}" for name in names] + ([WORKFLOW] if workflow else [])
    before = all_worker_pids(server, names)

    server_cpu_before = cpu_seconds(server.process.pid)
    started = time.monotonic()
    local = threading.local()
    slots = threading.BoundedSemaphore(IN_FLIGHT * 2)  # generated but not yet answered
    workflow_lane = threading.Lock()  # one workflow request at a time: a refused one fails its node batch
    futures: list[Future] = []
    generator_problems: list[str] = []

    def run(probe: Probe) -> Verdict:
        """Send and judge at once, so only the verdict (not the answer's images) is kept."""
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            if probe.path == WORKFLOW:
                with workflow_lane:
                    answer = send(server, probe, local.session)
            else:
                answer = send(server, probe, local.session)
        finally:
            slots.release()
        seen: Counter = Counter()
        return Verdict(probe, answer.status, judge(generator, answer, seen), seen)

    with ThreadPoolExecutor(IN_FLIGHT) as pool:

        @seed(SEED)
        @settings(
            max_examples=REQUESTS,
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(probes(generator, paths))
        def storm(probe: Probe) -> None:
            problem = generator_problem(generator, probe)
            if problem:
                generator_problems.append(f"{probe.describe()}: {problem}")
            slots.acquire()
            futures.append(pool.submit(run, probe))

        storm()
        answers: list[Verdict] = [future.result() for future in futures]
    seconds = time.monotonic() - started
    server_cpu = cpu_seconds(server.process.pid) - server_cpu_before

    seen: Counter = sum((answer.seen for answer in answers), Counter())
    problems = [f"{answer.probe.describe()}\n    -> {answer.problem}" for answer in answers if answer.problem]
    after = all_worker_pids(server, names)
    gone = {name: sorted(before[name] - after.get(name, set())) for name in before}
    restarts = {name: pids for name, pids in gone.items() if pids}

    by_path = Counter((a.probe.path, a.probe.kind, a.status) for a in answers)
    distinct = len({answer.probe.describe() for answer in answers})
    print(
        f"\nfuzz: {len(answers)} requests ({distinct} distinct, seed {SEED}) in {seconds:.0f}s = "
        f"{len(answers) / seconds:.1f} req/s, "
        f"{IN_FLIGHT} in flight; {len(problems)} problems, {len(generator_problems)} generator/schema "
        f"disagreements, worker restarts: {restarts or 0}; the server used {server_cpu:.0f} CPU s "
        f"({1000 * server_cpu / len(answers):.0f} ms a request)"
    )
    for path in paths + sorted({a.probe.path for a in answers} - set(paths)):
        row = {f"{kind} {status}": count for (p, kind, status), count in sorted(by_path.items(), key=str) if p == path}
        print(f"  {path:<24} {row}")
    print("  answers seen: " + ", ".join(f"{what}: {count}" for what, count in sorted(seen.items())))
    mutations = Counter(a.probe.what.split(" ")[0] for a in answers if a.probe.kind != "valid")
    print("  invalid requests by mutation: " + ", ".join(f"{k}: {v}" for k, v in sorted(mutations.items())))
    for line in (problems + generator_problems)[:40]:
        print("  " + line)

    assert len(answers) >= REQUESTS
    assert not problems, f"{len(problems)} answers broke the contract:\n" + "\n".join(problems[:40])
    assert not generator_problems, "\n".join(generator_problems[:40])
    assert not restarts, f"workers restarted: {restarts}"

    # after the storm every endpoint still answers a good request
    @seed(SEED)
    @settings(
        max_examples=1, phases=[Phase.generate], database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def good_requests(data: Any) -> None:
        session = requests.Session()
        for path in paths:
            probe = generator.valid(data.draw, path)
            answer = send(server, probe, session)
            problem = _valid(generator, answer, json_objects(answer.text))
            assert problem is None, f"after the storm: {probe.describe()}: {problem}"

    good_requests()
