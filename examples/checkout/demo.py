"""The demo incident, end to end, and the pieces tests and benchmarks share.

    python examples/checkout/demo.py --scripted      # keel's orchestration, a scripted fix
    python examples/checkout/demo.py                 # the configured model writes the fix

It builds the service's git history in a temp dir, creates the production database with
the last good deploy (percentage codes, before fixed-amount codes existed), starts the
buggy HEAD as production, starts keel in front of it with [remediation] on, sends traffic
through ``/svc/checkout`` and prints the incident as it unfolds. ``--approve`` clicks
"approve" for you once the canary passed (otherwise open the decision link it prints).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_repo import build as build_repo  # noqa: E402

# What a capable model answers for this incident; the scripted fixer replays it.
SCRIPTED_FIX: dict[str, Any] = {
    "root_cause": ("Commit 'Fixed-amount discount codes' added discounts.amount_off_cents; "
                   "rows created before it (every percentage code) have NULL there, and "
                   "cart_total calls min(None, subtotal) -> TypeError for those carts."),
    "patch": (
        "--- a/checkout/pricing.py\n"
        "+++ b/checkout/pricing.py\n"
        "@@ -32,5 +32,5 @@\n"
        "     if code:\n"
        "         d = discount_for(db, code)\n"
        "         subtotal -= subtotal * (d[\"percent\"] or 0) // 100\n"
        "-        subtotal -= min(d[\"amount_off_cents\"], subtotal)\n"
        "+        subtotal -= min(d[\"amount_off_cents\"] or 0, subtotal)\n"
        "     return max(subtotal, 0)\n"),
    "test_path": "tests/test_regression_null_amount_off.py",
    "test_code": (
        "from checkout.pricing import cart_total\n\n\n"
        "def test_every_production_code_prices_a_cart(clone_db):\n"
        "    codes = [r[0] for r in clone_db.execute('SELECT code FROM discounts')]\n"
        "    assert codes\n"
        "    for code in codes:\n"
        "        assert cart_total(clone_db, [('sku-2', 1)], code) >= 0\n"),
    "summary": "Treat a NULL amount_off_cents as no fixed discount",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    root: Path
    repo: Path
    db_url: str
    log_path: Path
    url: str
    proc: subprocess.Popen[bytes]

    def spec(self, **kw: Any) -> dict[str, Any]:
        """A ``[[remediation.services]]`` entry for this world."""
        return {"name": "checkout", "production_url": self.url, "repo": str(self.repo),
                "paths": ["checkout/", "tests/"], "tests_dir": "tests",
                "start": ["{python}", "-m", "checkout.server", "--port", "{port}",
                          "--db", "{db}", "--log", "{log}"],
                "test": ["{python}", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         "tests"],
                "database_url": self.db_url, "database_env": "CHECKOUT_DATABASE_URL",
                "log_path": str(self.log_path),
                "sandbox_env": {"CHECKOUT_PAYMENT_KEY": "sk_test_sandbox"},
                "env": {"CHECKOUT_PAYMENT_KEY": "sk_live_demo_not_a_real_key"}, **kw}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the service did not become healthy")


def init_production_db(repo: Path, root: Path, db_url: str) -> None:
    """Create production's database with the last good deploy (``deploy-good``)."""
    good = root / "good"
    data = subprocess.run(["git", "-C", str(repo), "archive", "deploy-good"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as t:
        t.extractall(good, filter="data")
    subprocess.run([sys.executable, "-c", "import sys; from checkout.server import App; "
                    "App(sys.argv[1])", db_url], cwd=good, check=True,
                   env={**os.environ, "CHECKOUT_PAYMENT_KEY": "sk_test_init"})


def build_world(root: Path, db_url: str | None = None, *, ref: str = "HEAD") -> World:
    """Repo + production database (good deploy) + production running ``ref`` (the bug)."""
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "checkout-repo"
    build_repo(repo)
    db_url = db_url or f"sqlite:///{root / 'production.db'}"
    init_production_db(repo, root, db_url)
    run_dir = repo
    if ref != "HEAD":
        run_dir = root / f"run-{ref}"
        data = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(data)) as t:
            t.extractall(run_dir, filter="data")
    port = free_port()
    log_path = root / "checkout.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "checkout.server", "--port", str(port), "--db", db_url,
         "--log", str(log_path)], cwd=run_dir,
        env={**os.environ, "CHECKOUT_PAYMENT_KEY": "sk_live_demo_not_a_real_key",
             "CHECKOUT_VERSION": "production"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return World(root, repo, db_url, log_path, url, proc)


async def run_demo(args: argparse.Namespace) -> None:
    import tempfile

    import httpx
    from traffic import run as traffic

    from keel.app import build_services, create_app
    from keel.config import load_settings
    from keel.gateway.background import serving
    from keel.remediation.fixer import ScriptedFixer
    from keel.remediation.remediator import Remediator

    root = Path(tempfile.mkdtemp(prefix="keel-checkout-demo-"))
    world = build_world(root)
    settings = load_settings(args.config, data_dir=str(root / "keel"), remediation={
        "enabled": True, "services": [world.spec()], "canary_s": args.canary_s})
    svc = build_services(settings)
    admin = svc.keys.create("ops", admin=True).secret
    rm = svc.get(Remediator)
    if args.scripted:
        rm.steps.fixer = ScriptedFixer(SCRIPTED_FIX)
    app = create_app(settings, services=svc)
    try:
        with serving(app) as base:
            print(f"keel at {base}; checkout through {base}/svc/checkout")
            job = asyncio.create_task(traffic(f"{base}/svc/checkout", args.rps, args.seconds,
                                              0.15, 7))
            h = {"authorization": f"Bearer {admin}"}
            async with httpx.AsyncClient(base_url=base, headers=h, timeout=30) as c:
                seen: set[str] = set()
                while not job.done():
                    await asyncio.sleep(1)
                    incs = (await c.get("/v1/remediation/incidents")).json()["data"]
                    for inc in incs:
                        full = (await c.get(f"/v1/remediation/incidents/{inc['id']}")).json()
                        for s in full["steps"]:
                            key = f"{inc['id']}:{s['step']}:{s['started_at']}"
                            if key not in seen:
                                seen.add(key)
                                print(f"  {s['step']:<17} {s['status']:<6} "
                                      f"{s['duration_s']:.2f}s")
                        if inc["status"] == "awaiting_approval" and args.approve:
                            pend = (await c.get("/v1/approvals?status=pending")).json()["data"]
                            for a in pend:
                                await c.post(f"/v1/approvals/{a['id']}/decision",
                                             json={"decision": "approve"})
                        if inc["outcome"]:
                            print("outcome:", inc["outcome"])
                            job.cancel()
                            return
    finally:
        world.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=None, help="keel.toml (models, approvals channels)")
    p.add_argument("--scripted", action="store_true", help="use the scripted fixer")
    p.add_argument("--approve", action="store_true", help="approve the fix automatically")
    p.add_argument("--rps", type=float, default=50)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--canary-s", type=float, default=60)
    asyncio.run(run_demo(p.parse_args()))


if __name__ == "__main__":
    main()
