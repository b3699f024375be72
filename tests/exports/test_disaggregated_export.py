"""The SGLang export of a prefill/decode disaggregated deployment
(planner/exports/disaggregated.py): the saved result tests/exports/data/disaggregated.json
(make_fixtures.py: Mixtral 8x7B on 32 H100, best deployment 3 prefill instances of 2 GPUs
with ep=2 over 2 replicas, 2 decode instances of 8 GPUs with ep=8 over 4 replicas).

The servers' and the router's own parsers read these commands in test_engines.py (when
installed); here our parser reads them back against the plans and the option files."""

from __future__ import annotations

import shlex
from pathlib import Path
import pytest
from meshplan_cli.testing import cli_runner

from cli import app
from planner.errors import SpecError, UnsupportedPlanError
from planner.exports import export_result
from planner.exports.common import option_names
from planner.exports.parse import command_flags

RUNNER = cli_runner()


def blocks(text: str) -> list[str]:
    """The export's paragraphs: the header, then the prefill, decode and router commands."""
    return [b for b in text.strip("\n").split("\n\n") if b.strip()]


def router_args(block: str) -> tuple[list[str], list[str]]:
    """(prefill 'URL PORT' entries, decode URLs) of the router command."""
    words = shlex.split(" ".join(line.rstrip("\\").strip() for line in block.splitlines()
                                 if not line.lstrip().startswith("#")))
    prefill, decode, i = [], [], 0
    while i < len(words):
        if words[i] == "--prefill":
            prefill.append(f"{words[i + 1]} {words[i + 2]}")
            i += 3
        elif words[i] == "--decode":
            decode.append(words[i + 1])
            i += 2
        else:
            i += 1
    return prefill, decode


@pytest.mark.parametrize("rank", range(5))
def test_each_deployment_exports_both_pools_and_the_router(saved, rank: int) -> None:
    data = saved("disaggregated")
    dep = data["top"][rank]
    text = export_result(data, "sglang", rank=rank, model_path="org/model")
    head, prefill, decode, router = blocks(text)
    assert "prefill/decode disaggregated" in head and f"(rank {rank})" in head
    docs = option_names("sglang")
    for block, role in ((prefill, "prefill"), (decode, "decode")):
        words, flags = command_flags(block)
        assert words[:3] == ["python", "-m", "sglang.launch_server"]
        assert flags["--disaggregation-mode"] == role
        assert not set(flags) - docs.names, set(flags) - docs.names
        pool, plan = dep[role], dep[role]["plan"]
        if plan["ep"] > plan["tp"]:          # one engine: tp over the expert ranks, attention DP
            g = plan["ep"] // plan["tp"]
            assert (flags["--tp-size"], flags["--attn-dp-size"], flags["--ep-size"]) == (
                str(plan["ep"]), str(g), str(plan["ep"]))
            assert flags["--dp-size"] == str(plan["dp"] // g) == "1"
        else:
            assert (flags["--tp-size"], flags["--dp-size"]) == (str(plan["tp"]), "1")
        assert flags["--max-running-requests"] == str(pool["batch_per_instance"])
        assert flags["--context-length"] == str(1024 + 256)
        assert f"each of the {pool['instances']} {role} instance(s)" in block
    prefill_urls, decode_urls = router_args(router)
    assert prefill_urls == [f"http://PREFILL_{i}:30000 8998"
                            for i in range(1, dep["prefill"]["instances"] + 1)]
    assert decode_urls == [f"http://DECODE_{i}:30000" for i in range(1, dep["decode"]["instances"] + 1)]
    router_names = {w for w in shlex.split(router.replace("\\", " ")) if w.startswith("--")}
    assert router_names <= option_names("sglang_router").names


def test_other_formats_are_refused(saved) -> None:
    data = saved("disaggregated")
    with pytest.raises(UnsupportedPlanError, match="vLLM cannot express .* KV-transfer"):
        export_result(data, "vllm")
    with pytest.raises(UnsupportedPlanError, match="serving deployment"):
        export_result(data, "megatron")
    with pytest.raises(SpecError, match="--rank 5 is out of range"):
        export_result(data, "sglang", rank=5)
    broken = saved("disaggregated")
    broken["top"][0]["prefill"]["devices_per_instance"] = 3
    with pytest.raises(SpecError, match="inconsistent"):
        export_result(broken, "sglang")


def test_cli_search_export_and_saved_export_agree(tmp_path: Path) -> None:
    args = ["search", "--mode", "inference", "--disaggregate", "--model", "mixtral-8x7b",
            "--cluster", "dgx-h100", "--gpus", "32", "--batch", "256", "--prompt-len", "1024",
            "--output-len", "256", "--max-ttft-ms", "500", "--max-tpot-ms", "30"]
    res = RUNNER.invoke(app, [*args, "--export", "sglang"])
    assert res.exit_code == 0, res.output
    assert "--disaggregation-mode prefill" in res.stdout and "best deployments" in res.stderr
    saved_json = tmp_path / "d.json"
    saved_json.write_text(RUNNER.invoke(app, [*args, "--json"]).stdout)
    res2 = RUNNER.invoke(app, ["export", str(saved_json), "--to", "sglang"])
    assert res2.exit_code == 0 and res2.stdout == res.stdout
    res3 = RUNNER.invoke(app, ["export", str(saved_json), "--to", "vllm"])
    assert res3.exit_code == 4 and "export --to sglang" in res3.output


def test_router_option_file_names_its_source() -> None:
    docs = option_names("sglang_router")
    assert "http" in docs.source and docs.names == {"--pd-disaggregation", "--prefill", "--decode"}
