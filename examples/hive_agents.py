"""Researcher -> coder -> critic: three agents on the local model, in three processes,
sharing one hive task through a keel gateway.

- the researcher asks the model for notes with ``x-keel-hive: TASK/researcher``: the
  gateway streams its tokens into the hive as they are generated;
- the coder tails ``researcher`` (SSE) and starts writing code as soon as it has the first
  notes, before the researcher has finished (its answer is teed into ``coder``);
- the coder saves its code as the task's shared file ``solution.py`` (``PUT`` with
  ``If-None-Match: *``: create, never overwrite someone else's);
- the critic tails ``coder`` to its end, then the ``files`` stream until ``solution.py``
  appears, expands ``hive://TASK/files/solution.py`` and critiques it.

Each agent writes its timeline (seconds since the start) to a shared file; the run prints
it and saves it to ``bench/results/hive_example.json``.

Usage: ``.venv/bin/python examples/hive_agents.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEEL = [sys.executable, "-c", "from keel.cli.main import main; main()"]
MODEL = "gemma-3-270m"


def note(timeline: str, t0: float, agent: str, event: str) -> None:
    line = json.dumps({"t": round(time.time() - t0, 3), "agent": agent, "event": event})
    with open(timeline, "a") as fh:  # O_APPEND: lines from three processes never mix
        fh.write(line + "\n")


def tail(http: httpx.Client, task: str, stream: str, key: str):  # type: ignore[no-untyped-def]
    """Yield (kind, text) records of a hive stream as they are written (SSE)."""
    with http.stream("GET", f"/v1/hive/tasks/{task}/streams/{stream}/tail?wait=true",
                     headers={"authorization": f"Bearer {key}"},
                     timeout=httpx.Timeout(30, read=None)) as resp:  # a tail may idle long
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                rec = json.loads(line[6:])
                yield rec["kind"], rec["data"]


def chat(http: httpx.Client, key: str, hive: str, prompt: str, max_tokens: int,
         on_token) -> str:  # type: ignore[no-untyped-def]
    body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "temperature": 0.2,
            "messages": [{"role": "user", "content": prompt}]}
    out = []
    with http.stream("POST", "/v1/chat/completions", json=body,
                     headers={"authorization": f"Bearer {key}", "x-keel-hive": hive}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:]).get("choices", []):
                    if (piece := c.get("delta", {}).get("content")):
                        if not out:
                            on_token()
                        out.append(piece)
    return "".join(out)


def agent(role: str, base: str, task: str, key: str, timeline: str, t0: float) -> None:
    http = httpx.Client(base_url=base, timeout=300)
    mark = lambda event: note(timeline, t0, role, event)  # noqa: E731
    mark("started")
    if role == "researcher":
        chat(http, key, f"{task}/researcher",
             "Write short research notes on how to remove duplicates from a Python list "
             "while keeping the order.", 96, lambda: mark("first token generated"))
        mark("finished (end record)")
    elif role == "coder":
        notes = ""
        for kind, text in tail(http, task, "researcher", key):
            if kind == "tokens" and not notes:
                mark("first researcher byte read")
            notes += text
            if len(notes) >= 80 or kind == "end":
                break  # enough to start on: the researcher is still writing
        mark("starts generating (researcher not done)")
        code = chat(http, key, f"{task}/coder",
                    f"Notes: {notes}\nWrite a Python function that does this.", 96,
                    lambda: mark("first token generated"))
        mark("finished (end record)")
        r = http.put(f"/v1/hive/tasks/{task}/files/solution.py", content=code.encode(),
                     headers={"authorization": f"Bearer {key}", "if-none-match": "*"})
        r.raise_for_status()
        mark(f"saved {r.json()['ref']}")
    else:  # critic
        seen = False
        for kind, _text in tail(http, task, "coder", key):
            if kind == "tokens" and not seen:
                seen = True
                mark("first coder byte read")
        mark("coder stream ended")
        for _kind, text in tail(http, task, "files", key):  # one record per file change
            if json.loads(text)["name"] == "solution.py":
                break
        ref = f"hive://{task}/files/solution.py"
        code = http.post("/v1/hive/expand", json={"text": ref},
                         headers={"authorization": f"Bearer {key}"}).json()["text"]
        mark(f"read {ref} ({len(code)} chars)")
        chat(http, key, f"{task}/critic",
             "Here is a Python function:\n\n```python\n" + code.strip("`\n") + "\n```\n\n"
             "In two sentences, say whether it removes duplicates correctly and why.", 64,
             lambda: mark("first token generated"))
        mark("finished (end record)")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="keel-hive-example-"))
    models = os.environ.get("KEEL_MODELS_DIR", str(ROOT / ".keel" / "models"))
    cfg = tmp / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp / "data"}"\nmodels_dir = "{models}"\n'
                   "[hive]\nenabled = true\n[cache]\nenabled = false\n")
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    keys = {}
    for role in ("researcher", "coder", "critic"):
        out = subprocess.run([*KEEL, "keys", "create", "--tenant", "demo", "--agent", role,
                              "--json"], env=env, capture_output=True, text=True, check=True)
        keys[role] = json.loads(out.stdout)["key"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*KEEL, "serve", "--port", str(port), "--log-level", "warning"],
                              env=env)
    try:
        http = httpx.Client(base_url=base, timeout=600)
        deadline = time.time() + 300  # a loaded machine can take a while to start it
        while True:
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the keel server did not start") from None
                time.sleep(0.2)
        # warm the model so the timeline shows the hive, not the model load
        http.post("/v1/chat/completions", headers={"authorization": f"Bearer {keys['critic']}"},
                  json={"model": MODEL, "max_tokens": 1,
                        "messages": [{"role": "user", "content": "hi"}]})
        task = http.post("/v1/hive/tasks", json={"ttl_s": 3600},
                         headers={"authorization": f"Bearer {keys['researcher']}"}
                         ).json()["name"]
        timeline = str(tmp / "timeline.jsonl")
        t0 = time.time()
        procs = [subprocess.Popen([sys.executable, __file__, "_agent", role, base, task,
                                   keys[role], timeline, repr(t0)])
                 for role in ("critic", "coder", "researcher")]
        for p in procs:
            p.wait(timeout=600)
        events = [json.loads(x) for x in Path(timeline).read_text().splitlines()]
        events.sort(key=lambda e: e["t"])
        print(f"\nhive task {task}: timeline (seconds since the agents started)")
        for e in events:
            print(f"  {e['t']:7.2f}  {e['agent']:<10}  {e['event']}")
        texts = {s: http.get(f"/v1/hive/tasks/{task}/streams/{s}",
                             headers={"authorization": f"Bearer {keys['critic']}"}).text
                 for s in ("researcher", "coder", "critic")}
        for s, text in texts.items():
            print(f"\n--- {s} ---\n{text.strip()[:400]}")
        dest = ROOT / "bench" / "results" / "hive_example.json"
        dest.write_text(json.dumps({"task": task, "timeline": events,
                                    "chars": {s: len(t) for s, t in texts.items()}}, indent=2))
        print(f"\nwrote {dest}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        r, b, t, k, tl, t0 = sys.argv[2:8]
        agent(r, b, t, k, tl, float(t0))
    else:
        main()
