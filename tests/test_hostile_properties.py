"""Issue 13 acceptance: random settlements with hostile ids and amounts, two nights on one ledger.

Whatever the input, a run never ends in an internal error (exit 1), never pays a settlement
twice across nights (a re-sent settlement with an invisible character in its id is the same
settlement), accounts for every input settlement (paid, zero, denied, reversal, quarantined or an
identical repeat), and never writes a name or an ID number into an output file, the ledger's
archive, stdout or stderr.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Extract, adjudicate_args, run_cli

NAME = "欧阳测试"  # every member's name: it must appear nowhere in what a run writes
CERTNO = "330102199001017777"

# ways a platform export (or an attacker) decorates an id
DECORATIONS = [
    lambda s: s,
    lambda s: s + "\u200b",  # zero-width space
    lambda s: "\ufeff" + s,  # BOM inside the value
    lambda s: s[:1] + "\x01" + s[1:],  # control character
    lambda s: s.translate(str.maketrans("0123456789", "０１２３４５６７８９")),  # full-width
    lambda s: f"  {s} ",  # padding
    lambda s: s + "\u00a0",  # no-break space
]
AMOUNTS = [
    "1200.00",
    "0",
    "25000.5",
    "10000000000.00",  # the maximum
    "10000000000.01",  # one fen above it
    "-5.00",
    "184467440737095517.00",  # wrapped to 0.84 yuan before
    "1.234",
    "１２３.４５",
    "",
    "1e5",
]


def _night(picks: list[tuple[int, int, int, int]]) -> Extract:
    """Settlements S<k>: member P<k % 3>, with decoration ``d`` on the id, amount ``a`` of
    reasonable cost and hostile value ``h`` pasted into a header amount and, for odd k, into a
    fee line's amount too (or none)."""
    ex = Extract()
    ex.on_list("negative", "NEG1", "2021-01-01")
    ex.on_list("admission", "SV-ADM", "2021-01-01")
    for m in range(3):
        ex.member(f"P{m}", psn_name=NAME, certno=CERTNO)
    for k, d, a, h in picks:
        # the helper builds consistent lines from a plain amount; hostile text goes in below
        plain = AMOUNTS[a] if AMOUNTS[a].replace(".", "").lstrip("-").isascii() else "100"
        plain = plain if plain and "e" not in plain else "100"
        ex.claim(
            f"S{k:03d}",
            f"P{k % 3}",
            f"2022-03-{k % 27 + 1:02d} 10:00:00",
            reasonable=plain,
            psn_name=NAME,
            certno=CERTNO,
        )
        header = ex.settlements[-1]
        header["setl_id"] = DECORATIONS[d](header["setl_id"])
        if h >= 0:
            header["hifp_pay"] = AMOUNTS[h]
            if k % 2:
                ex.lines[-1]["inscp_scp_amt"] = AMOUNTS[h]
        for line in ex.lines:
            if line["setl_id"] == f"S{k:03d}":
                line["setl_id"] = header["setl_id"]
    return ex


def _no_personal_data(folder: Path, text: str) -> None:
    assert NAME not in text and CERTNO not in text
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data.startswith(b"PAR1"):
            frame = pl.read_parquet(path)
            for col in frame.columns:
                values = [str(v) for v in frame[col].to_list()]
                assert not any(NAME in v or CERTNO in v for v in values), (path, col)
        elif not path.name.endswith(".duckdb"):
            assert NAME.encode() not in data and CERTNO.encode() not in data, path


def _accounted(out: Path, rows_in: int) -> set[str]:
    """Every input settlement is accounted for; returns the ids that were paid."""
    recon = json.loads((out / "reconciliation.json").read_text(encoding="utf-8"))
    counts = recon["settlements"]
    payouts = pl.read_parquet(out / "payouts.parquet")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    rejected = quarantine.filter(pl.col("record") == "settlement").height
    assert rows_in == payouts.height + rejected + counts["identical_repeats"]
    return set(payouts.filter(pl.col("status") == "paid")["setl_id"].to_list())


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 5),  # settlement
            st.integers(0, len(DECORATIONS) - 1),  # id decoration, night 1
            st.integers(0, len(DECORATIONS) - 1),  # id decoration, night 2 (re-sent)
            st.integers(0, len(AMOUNTS) - 1),  # reasonable cost
            st.integers(-1, len(AMOUNTS) - 1),  # hostile hifp_pay (-1: none)
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_hostile_nights_never_crash_pay_twice_drop_or_leak(
    tmp_path_factory: Any, data: list[tuple[int, int, int, int, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    ledger = tmp / "ledger.duckdb"
    assert run_cli(["ledger", "init", str(ledger)]).exit_code == 0
    paid: list[set[str]] = []
    for night in (1, 2):
        picks = [(k, d1 if night == 1 else d2, a, h) for k, d1, d2, a, h in data]
        # night 2 re-sends night 1's settlements, ids decorated otherwise, with one new
        # settlement dated after them (so the night is in order and not a replay of night 1)
        ex = _night(picks)
        if night == 2:
            ex.claim("N001", "P0", "2022-04-01 10:00:00", reasonable="100")
        files = ex.write(tmp / f"in{night}")
        out = tmp / f"out{night}"
        r = run_cli(adjudicate_args(files, out, "--ledger", str(ledger)))
        assert r.exit_code == 0, r.output
        _no_personal_data(out, r.output)
        ids = _accounted(out, len(ex.settlements))
        paid.append({unicodedata.normalize("NFKC", s).strip() for s in ids})
    assert not paid[0] & paid[1], "a settlement re-sent the next night was paid again"
    _no_personal_data(ledger.with_name(ledger.name + ".files"), "")
