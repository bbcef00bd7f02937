"""The three command lines end on a bad argument the same way: one line on stderr, exit status 2
(``playground.errors.usage_error`` / ``OneLineArgumentParser``, issue 18)."""
from __future__ import annotations

import pytest

from playground.errors import EXIT_USAGE, OneLineArgumentParser, usage_error


def test_usage_error_prints_one_line_and_returns_2(capsys):
    assert usage_error("no such run", "benchmarks") == EXIT_USAGE == 2
    assert usage_error("--prompt is empty") == 2
    assert usage_error("refusing to --share", "launch.py", label="") == 2
    assert capsys.readouterr().err.splitlines() == ["benchmarks: error: no such run", "error: --prompt is empty",
                                                     "launch.py: refusing to --share"]


def _argparse_error(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_the_parsers_of_the_cli_and_the_benchmark_say_one_line(capsys):
    from benchmarks.__main__ import build_parser as bench_parser
    from playground.cli import build_parser as chat_parser
    assert isinstance(chat_parser(), OneLineArgumentParser) and isinstance(bench_parser(), OneLineArgumentParser)
    assert _argparse_error(chat_parser(), ["--variant", "int3"], capsys).startswith(
        "error: argument --variant: invalid choice: 'int3'")
    err = _argparse_error(bench_parser(), ["run", "--repeats", "x"], capsys)
    assert err.startswith("benchmarks: error: argument --repeats: invalid int value: 'x'") and \
        err.endswith(" (see --help)\n") and err.count("\n") == 1, err
    err = _argparse_error(bench_parser(), ["nonsense"], capsys)        # a subcommand's parser is one too
    assert err.startswith("benchmarks: error: argument cmd: invalid choice") and err.count("\n") == 1, err


def test_a_config_error_of_the_benchmark_is_one_line_and_status_2(tmp_path, capsys):
    from benchmarks.__main__ import main
    assert main(["run", "--model", "smollm2-135m-instruct", "--variants", "int3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks: error: ") and "int3" in err and err.count("\n") == 1, err
