"""The reproduction report script: its section of RESULTS.md and a tiny end-to-end run."""

from __future__ import annotations

import json

from benchmarks.reproduce import BEGIN, END, main, replace_section


def test_replace_section_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "RESULTS.md"
    assert replace_section(path, "one") == f"{BEGIN}\none\n{END}\n"
    path.write_text(f"# head\n\n{BEGIN}\nold\n{END}\n\n## kernels\ntable\n")
    text = replace_section(path, "new")
    assert text == f"# head\n\n{BEGIN}\nnew\n{END}\n\n## kernels\ntable\n"
    path.write_text("# only a head\n")
    assert replace_section(path, "x") == f"# only a head\n\n{BEGIN}\nx\n{END}\n"


def test_tiny_run_writes_tables_figure_and_data(tmp_path, capsys):
    (tmp_path / "RESULTS.md").write_text("# kept\n")
    args = ["--models", "toy2d", "--steps", "3", "--sweep", "1.0", "--sweep-steps", "3"]
    assert main(args + ["--n-mixture", "40", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# kept\n") and BEGIN in text and END in text
    payload = json.loads((tmp_path / "reproduce.json").read_text())
    settings = {r["setting"] for r in payload["rows"]}
    assert settings == {"none", "cfg", "nag", "cfg+nag", "cnag", "eps-scaling", "time-shift"}
    assert {r["solver"] for r in payload["rows"]} == {"euler", "euler-maruyama"}
    assert [r["nag_scale"] for r in payload["sweep"]] == [1.0, 1.0]
    assert len(text.split("| 3 | euler |")) - 1 == 7  # one table row per setting
    assert (tmp_path / "noise_shift_toy2d.png").is_file()
    before = text
    assert main(["--render-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == before
