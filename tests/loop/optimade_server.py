"""A real OPTIMADE server for tests: the `optimade` package's reference implementation (FastAPI, mongomock back
end) serving the structures of one JSONL file on 127.0.0.1.

Run: python tests/loop/optimade_server.py DATA.jsonl PORT (requests are logged on stderr, one line each).
`write_jsonl` turns pymatgen structures into that file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pymatgen.core import Structure


def write_jsonl(
    path: Path, structures: Mapping[str, Structure], *, raw: Mapping[str, dict[str, Any]] = {}
) -> None:
    """An OPTIMADE JSONL file of `structures` by entry id, plus `raw` attribute dicts served as they are."""
    from optimade.adapters.structures.pymatgen import from_pymatgen

    lines = [{"x-optimade": {"meta": {"api_version": "1.1.0"}}}]
    for ident, structure in structures.items():
        attrs = from_pymatgen(structure).model_dump(mode="json", exclude_none=True)
        lines.append(
            {
                "id": ident,
                "type": "structures",
                "attributes": {**attrs, "last_modified": "2026-01-01T00:00:00Z"},
            }
        )
    for ident, attrs in raw.items():
        lines.append({"id": ident, "type": "structures", "attributes": attrs})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def main() -> None:
    import uvicorn
    from optimade.server.config import ServerConfig
    from optimade.server.create_app import create_app

    data, port = sys.argv[1], int(sys.argv[2])
    config = ServerConfig(
        insert_test_data=False,
        insert_from_jsonl=data,
        base_url=f"http://127.0.0.1:{port}",
        database_backend="mongomock",
        page_limit=2,  # several pages per answer: the client must follow them
    )
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="info", access_log=True)


if __name__ == "__main__":
    main()
