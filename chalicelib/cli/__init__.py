"""`lifeboat`, the operator's command line (entry point `chalicelib.cli:main`).

- `entry`: the parser's table of contents (`build_parser`) and `main`, the one place errors become exit codes;
- `parser`: global options before or after the command, `add_command`, the exit codes in --help;
- `output`: human text or one JSON document (`Output`), sizes and ages for people;
- `commands`, `listing`, `operations` (check, status, drills): what each command does (the recovery commands':
  chalicelib.pitr.commands); `completion`: bash/zsh scripts generated from the parser;
- `python -m chalicelib.cli` runs `lifeboat` where its entry point is not installed (`__main__`).
"""

from chalicelib.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
