"""RAG indexes belong to a tenant: reads, ingests and error messages never cross tenants.

Real MiniLM embeddings, the embedded usearch index, real SQLite; the model answering is the
scripted fake upstream (what is checked is which passages reach the prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Column, Float, Integer, MetaData, String, Table
from typer.testing import CliRunner

from keel.cli.main import build
from keel.gateway.services import Services
from keel.rag import catalog
from keel.rag.ingest import Document, ingest
from keel.rag.retrieve import Retriever
from keel.storage.migrations import migrate
from keel.storage.sql import Database

from fakes import FakeUpstream

ACME = [Document("acme-pw", "ACME passwords", "ACME staff reset passwords at the "
                 "blue kiosk on floor three; the code word is PELICAN.")]
GLOBEX = [Document("globex-pw", "Globex passwords", "Globex staff reset passwords by "
                   "calling the helpdesk at extension 4242.")]


async def add(services: Services, tenant: str, name: str, docs: list[Document]
              ) -> catalog.IndexInfo:
    vector = await services.db.run(lambda c: catalog.vector_for(c, tenant, name))
    retriever = services.get(Retriever)
    vectors = retriever.open_vectors(vector)
    try:
        return await ingest(services.db, vectors, retriever.embedder, tenant, name, docs,
                            services.settings.rag)
    finally:
        await vectors.aclose()


def chat(text: str) -> dict:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": text}]}


async def test_a_tenant_reads_only_its_own_index(
    client: httpx.AsyncClient, services: Services, fake_upstream: FakeUpstream
) -> None:
    acme = services.keys.create("acme", agent="bot").secret
    globex = services.keys.create("globex", agent="bot").secret
    await add(services, "acme", "help", ACME)
    await add(services, "acme", "acme-secret-plans", ACME)

    # globex names acme's index: not found, and the error lists none of acme's names
    r = await client.post("/v1/chat/completions", json=chat("How do I reset my password?"),
                          headers={"Authorization": f"Bearer {globex}", "x-keel-rag": "help"})
    assert r.status_code == 404, r.text
    message = r.json()["error"]["message"]
    assert "acme-secret-plans" not in message and "none yet" in message
    assert fake_upstream.calls == []

    # globex's own "help" is a different index with the same name
    await add(services, "globex", "help", GLOBEX)
    for key, mine, theirs in ((acme, "PELICAN", "4242"), (globex, "4242", "PELICAN")):
        r = await client.post("/v1/chat/completions", json=chat("How do I reset my password?"),
                              headers={"Authorization": f"Bearer {key}", "x-keel-rag": "help"})
        assert r.status_code == 200, r.text
        context = fake_upstream.calls[-1]["body"]["messages"][0]["content"]
        assert mine in context and theirs not in context
    listed = await services.db.run(lambda c: catalog.list_indexes(c, "globex"))
    assert [(i.tenant, i.name) for i in listed] == [("globex", "help")]


def test_cli_ingest_takes_a_tenant(tmp_path: Path, fake_upstream: FakeUpstream,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import MODELS_DIR

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nmodels_dir = "{MODELS_DIR}"\n')
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": ACME[0].text}) + "\n")

    def run(*args: str) -> tuple[int, str]:
        res = CliRunner(env={"COLUMNS": "200"}).invoke(build(), ["--config", str(cfg), *args])
        return res.exit_code, res.output

    code, out = run("rag", "ingest", str(docs), "--index", "help", "--tenant", "acme", "--json")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["tenant"] == "acme"
    code, out = run("rag", "list", "--tenant", "globex", "--json")
    assert code == 0 and json.loads(out) == []
    code, out = run("rag", "search", "password", "--index", "help", "--tenant", "globex")
    assert code != 0 and "does not exist" in out
    code, out = run("rag", "search", "password", "--index", "help", "--tenant", "acme",
                    "--json")
    assert code == 0 and "PELICAN" in out


def test_indexes_from_before_tenants_move_to_the_default_tenant(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keel.db'}")
    old = Table("rag_indexes", MetaData(), Column("name", String(64), primary_key=True),
                Column("version", Integer), Column("generation", Integer),
                Column("documents", Integer), Column("chunks", Integer),
                Column("updated_at", Float))
    migrate(db, catalog.MIGRATIONS[:1])
    db.transaction(lambda c: c.execute(old.insert().values(
        name="help", version=3, generation=2, documents=5, chunks=9, updated_at=1.0)))
    assert migrate(db, catalog.MIGRATIONS) == ["rag/0002_tenant_scoped"]
    info = db.transaction(lambda c: catalog.get_index(c, "default", "help"))
    assert info is not None and (info.vector, info.version, info.chunks) == ("rag-help", 3, 9)
    assert db.transaction(lambda c: catalog.get_index(c, "acme", "help")) is None
    db.dispose()
