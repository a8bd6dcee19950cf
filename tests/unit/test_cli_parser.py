"""The `lifeboat` parser: every option explained, global options before or after the command, usage errors
reported once (as JSON under --json), --version, the exit codes in --help, completion generated from the parser."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
from collections.abc import Iterator

import pytest

from chalicelib.cli import build_parser, main
from chalicelib.cli import parser as parser_module
from chalicelib.cli.completion import bash_script, zsh_script

GLOBALS = {
    "--config": "c.json",
    "--region": "eu-west-1",
    "--profile": "ops",
    "--stack": "pg-lifeboat-prod",
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def every_action() -> Iterator[tuple[str, argparse.Action]]:
    top = build_parser()
    yield from (("lifeboat", a) for a in top._actions)
    for name, sub in subcommands(top).items():
        yield from ((name, a) for a in sub._actions)


def test_every_option_and_argument_has_help_text() -> None:
    missing = [
        f"{where}: {action.option_strings or action.dest}"
        for where, action in every_action()
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert missing == []
    [subs] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert all((c.help or "").strip() for c in subs._choices_actions)
    assert len(subs._choices_actions) == len(subcommands(build_parser()))


@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_global_options_before_or_after_the_command(command: str) -> None:
    needs = {
        "backup": ["shop"],
        "restore": ["logical:shop:20261129T030000Z", "--database", "x"],
        "verify": ["logical:shop:20261129T030000Z"],
        "snapshot": ["shop"],
        "run-restore": ["r-1"],
        "completion": ["bash"],
        "wal-stream": ["shop"],
        "base-backup": ["shop"],
        "wal-fetch": ["--target", "shop", "000000010000000000000001", "pg_wal/RECOVERYXLOG"],
        "recover": ["shop", "--latest", "--pgdata", "/tmp/recovered"],
        "wal-status": ["shop"],
        "wal-window": ["shop"],
        "wal-prune": ["shop"],
    }.get(command, [])
    flags = [w for option, value in GLOBALS.items() for w in (option, value)] + ["-v", "--json"]
    parser = build_parser()
    for argv in ([*flags, command, *needs], [command, *needs, *flags], [*flags[:4], command, *needs, *flags[4:]]):
        args = parser.parse_args(argv)
        assert (args.config, args.region, args.profile, args.stack) == tuple(GLOBALS.values()), argv
        assert args.verbose is True and args.json is True, argv
    args = parser.parse_args([command, *needs])
    assert (args.config, args.region, args.profile, args.stack, args.verbose, args.json) == (None,) * 4 + (False,) * 2


def test_no_option_shadows_what_add_command_stores() -> None:
    """add_command stores the runner as `run` and the error exit as `error_exit`: an option with either dest would
    replace it (`drills --run` did)."""
    shadowing = [
        f"{where}: {action.option_strings or action.dest}"
        for where, action in every_action()
        if where != "lifeboat" and action.dest in {"run", "error_exit"}
    ]
    assert shadowing == []


def test_an_option_before_the_command_survives_the_subcommand_defaults() -> None:
    args = build_parser().parse_args(["--region", "eu-west-1", "list", "--json"])
    assert args.region == "eu-west-1" and args.json is True and args.limit == 50


def test_usage_errors_exit_2_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["list", "--limit", "0"], out=out) == 2
    err = capsys.readouterr().err
    assert out.getvalue() == "" and err.count("lifeboat: error:") == 1 and "--limit: 0 is not positive" in err
    assert err.startswith("usage: lifeboat list")

    assert main(["nosuch", "--json"], out=out) == 2
    document = json.loads(out.getvalue())
    assert document["status"] == "FAILED" and document["error"]["code"] == "usage"
    assert "invalid choice: 'nosuch'" in document["error"]["message"]
    assert capsys.readouterr().err == ""


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "lifeboat 0.1.0\n"  # the installed (editable) distribution's metadata

    def not_installed(name: str) -> str:
        raise parser_module.PackageNotFoundError(name)

    monkeypatch.setattr(parser_module, "version", not_installed)
    assert main(["--version"]) == 0
    assert "not installed" in capsys.readouterr().out


def test_help_documents_the_exit_codes_and_the_output_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "0  success" in text and "1  the operation failed" in text and "2  bad input or configuration" in text
    assert '{"status": "FAILED", "error": {"code": ..., "message": ...}}' in text
    assert main(["list", "--help"]) == 0
    assert "2  bad input or configuration" in capsys.readouterr().out


def test_add_command_is_one_call() -> None:
    parser, sub = parser_module.new_parser("test")
    parser_module.add_command(sub, "hello", lambda args, out: 0, "say hello", [parser_module.arg("name", help="who")])
    args = parser.parse_args(["hello", "you", "--region", "eu-west-1", "--json"])
    assert (args.name, args.region, args.json, args.run(args, None)) == ("you", "eu-west-1", True, 0)


# --- completion ---------------------------------------------------------------------------------------------------


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for the last word of `lifeboat WORDS...`, through the script's own function."""
    words_literal = " ".join(f"'{w}'" for w in ("lifeboat", *words))
    program = (
        f"source /dev/stdin; complete -p lifeboat >&2; COMP_WORDS=({words_literal}); COMP_CWORD={len(words)};"
        ' _lifeboat; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], input=script, capture_output=True, text=True, check=True)
    assert done.stderr.strip() == "complete -F _lifeboat lifeboat"
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_completes_commands_options_and_values() -> None:
    script = bash_script(build_parser())
    commands = set(subcommands(build_parser()))
    assert set(complete(script, "")) >= commands | {"--json", "--region", "--version"}
    assert complete(script, "ba") == ["backup", "base-backup"]
    assert complete(script, "wal-f") == ["wal-fetch"]
    assert complete(script, "res") == ["restore", "restores"]
    assert complete(script, "rec") == ["recover"]
    assert complete(script, "--region", "eu-west-1", "li") == ["list", "lifecycle"]
    assert complete(script, "--stack", "restore", "--no") == []  # an option's value is not the command
    assert complete(script, "restore", "--no") == ["--no-owner", "--no-acl"]
    assert complete(script, "list", "--f") == ["--failed"]
    assert complete(script, "backup", "shop", "--trigger", "") == ["on-demand", "schedule"]
    assert {"bash", "zsh"} <= set(complete(script, "completion", ""))
    assert complete(script, "list", "--limit", "") == []  # a free value: nothing to offer


def test_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["completion", "bash"], out=out) == 0
    assert out.getvalue() == bash_script(build_parser())
    program = ["bash", "-c", "source /dev/stdin; complete -p lifeboat"]
    bash = subprocess.run(program, input=out.getvalue(), capture_output=True, text=True, check=False)
    assert bash.returncode == 0 and bash.stdout.strip() == "complete -F _lifeboat lifeboat", bash.stderr
    out = io.StringIO()
    assert main(["completion", "zsh", "--json"], out=out) == 0
    document = json.loads(out.getvalue())
    assert document["shell"] == "zsh" and document["script"] == zsh_script(build_parser())
    assert document["script"].startswith("#compdef lifeboat\n") and "bashcompinit" in document["script"]
