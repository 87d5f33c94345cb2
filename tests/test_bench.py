import re

from mnist_core.__main__ import main


def test_bench_quick_runs_and_prints_its_figures(capsys):
    assert main(["bench", "--quick", "--batches", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(out)
    ref = re.search(r"\[cpu\] reference pipeline: +([\d,]+) images/s", text)
    core = re.search(r"\[cpu\] core pipeline, bf16: ([\d,]+) images/s", text)
    assert ref and core
    assert float(ref.group(1).replace(",", "")) > 0 and float(core.group(1).replace(",", "")) > 0
    assert re.search(r"model build \+ param count: [\d.]+ ms", text)
    assert re.search(r"canvas prediction \(preprocess \+ forward\): [\d.]+ ms", text)
    assert re.fullmatch(r"speedup: \d+\.\dx", out[-1])
