"""Shell completion scripts for bash, zsh and fish, generated from the CLI's own parser.

The scripts are static: commands, subcommands, options, the choices of options that have them
(``--status``) and file names where a command takes a file. They never call ``llem-client``
while completing, so completion works with no server and costs nothing. Job ids are not
completed (they live on the server).

    llem-client completion bash > ~/.local/share/bash-completion/completions/llem-client
    llem-client completion zsh > "${fpath[1]}/_llem-client"
    llem-client completion fish > ~/.config/fish/completions/llem-client.fish
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

PROG = "llem-client"
#: Metavars of options and positionals whose value is a file name.
FILE_METAVARS = {"FILE", "PATH", "CONFIG"}


@dataclass
class Command:
    """A command as the completion scripts need it."""

    name: str
    help: str = ""
    options: list[str] = field(default_factory=list)
    #: Options that take a value, and the words to offer for it (empty: any value).
    values: dict[str, list[str]] = field(default_factory=dict)
    file_options: list[str] = field(default_factory=list)
    takes_files: bool = False
    #: Words a positional argument takes (``completion bash``).
    arguments: list[str] = field(default_factory=list)
    subcommands: list[Command] = field(default_factory=list)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def describe(parser: argparse.ArgumentParser, name: str = PROG, help_text: str = "") -> Command:
    """The command tree of ``parser`` (argparse's own records of its arguments)."""
    command = Command(name=name, help=help_text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for sub_name, sub in action.choices.items():
                command.subcommands.append(describe(sub, sub_name, helps.get(sub_name, "")))
            continue
        if not action.option_strings:
            if str(action.metavar) in FILE_METAVARS:
                command.takes_files = True
            command.arguments += [str(c) for c in action.choices or ()]
            continue
        command.options += [o for o in action.option_strings if o.startswith("--")]
        if action.nargs == 0:
            continue
        for option in action.option_strings:
            command.values[option] = [str(c) for c in action.choices or ()]
            if str(action.metavar) in FILE_METAVARS:
                command.file_options.append(option)
    return command


def _words(items: list[str]) -> str:
    return " ".join(items)


def bash_script(root: Command) -> str:
    """A bash completion function; zsh loads the same through bashcompinit."""
    value_options = sorted({o for c in _walk(root) for o in c.values})
    file_options = sorted({o for c in _walk(root) for o in c.file_options})
    choices = {o: v for c in _walk(root) for o, v in c.values.items() if v}
    lines = [
        f"# {PROG} completion for bash (zsh uses it through bashcompinit).",
        "_llem_client() {",
        "    # zsh (bashcompinit) indexes arrays from 0 only with ksharrays.",
        "    [[ -n ${ZSH_VERSION-} ]] && setopt localoptions ksharrays",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" sub="" skip=0 i word',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        "        if ((skip)); then skip=0; continue; fi",
        '        case "$word" in',
        f"            {'|'.join(value_options)}) skip=1 ;;",
        "            -*) ;;",
        '            *) if [[ -z "$cmd" ]]; then cmd="$word"; elif [[ -z "$sub" ]]; then '
        'sub="$word"; fi ;;',
        "        esac",
        "    done",
        '    case "$prev" in',
    ]
    for option, words in sorted(choices.items()):
        lines.append(
            f'        {option}) COMPREPLY=($(compgen -W "{_words(words)}" -- "$cur")); return ;;'
        )
    if file_options:
        lines.append(
            f'        {"|".join(file_options)}) COMPREPLY=($(compgen -f -- "$cur")); return ;;'
        )
    others = [o for o in value_options if o not in choices and o not in file_options]
    if others:
        lines.append(f"        {'|'.join(others)}) COMPREPLY=(); return ;;")
    lines += ["    esac", '    case "$cmd" in']
    top = [c.name for c in root.subcommands] + root.options
    lines.append(f'        "") COMPREPLY=($(compgen -W "{_words(top)}" -- "$cur")) ;;')
    for command in root.subcommands:
        if command.subcommands:
            names = _words([c.name for c in command.subcommands])
            lines.append(f"        {command.name})")
            lines.append('            case "$sub" in')
            lines.append(f'                "") COMPREPLY=($(compgen -W "{names}" -- "$cur")) ;;')
            for sub in command.subcommands:
                lines.append(f"                {sub.name}) {_bash_leaf(sub)} ;;")
            lines.append("            esac ;;")
        else:
            lines.append(f"        {command.name}) {_bash_leaf(command)} ;;")
    lines += [
        "    esac",
        "}",
        f"complete -o filenames -F _llem_client {PROG}",
        "",
    ]
    return "\n".join(lines)


def _bash_leaf(command: Command) -> str:
    options = f'COMPREPLY=($(compgen -W "{_words(command.options)}" -- "$cur"))'
    if command.arguments:
        other = f'COMPREPLY=($(compgen -W "{_words(command.arguments)}" -- "$cur"))'
    elif command.takes_files:
        other = 'COMPREPLY=($(compgen -f -- "$cur"))'
    else:
        return options
    return f'if [[ "$cur" == -* ]]; then {options}; else {other}; fi'


def zsh_script(root: Command) -> str:
    """The bash function, loaded through zsh's bashcompinit (compinit first, if needed)."""
    return "\n".join(
        [
            f"#compdef {PROG}",
            f"# {PROG} completion for zsh.",
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }",
            "autoload -U +X bashcompinit && bashcompinit",
            bash_script(root),
        ]
    )


def fish_script(root: Command) -> str:
    """``complete`` lines for fish."""
    top = _words([c.name for c in root.subcommands])
    lines = [f"# {PROG} completion for fish.", f"complete -c {PROG} -f"]
    for option in root.options:
        lines.append(_fish_option(f"not __fish_seen_subcommand_from {top}", option, root))
    for command in root.subcommands:
        lines.append(
            f"complete -c {PROG} -n {shlex.quote(f'not __fish_seen_subcommand_from {top}')} "
            f"-a {command.name} -d {shlex.quote(command.help)}"
        )
        seen = f"__fish_seen_subcommand_from {command.name}"
        leaves = [command]
        if command.subcommands:
            names = _words([c.name for c in command.subcommands])
            for sub in command.subcommands:
                lines.append(
                    f"complete -c {PROG} -n "
                    f"{shlex.quote(f'{seen}; and not __fish_seen_subcommand_from {names}')} "
                    f"-a {sub.name} -d {shlex.quote(sub.help)}"
                )
            leaves = command.subcommands
        for leaf in leaves:
            condition = (
                seen if leaf is command else f"{seen}; and __fish_seen_subcommand_from {leaf.name}"
            )
            for option in leaf.options:
                lines.append(_fish_option(condition, option, leaf))
            if leaf.takes_files:
                lines.append(f"complete -c {PROG} -n {shlex.quote(condition)} -F")
            if leaf.arguments:
                words = shlex.quote(_words(leaf.arguments))
                lines.append(f"complete -c {PROG} -n {shlex.quote(condition)} -a {words}")
    return "\n".join(lines) + "\n"


def _fish_option(condition: str, option: str, command: Command) -> str:
    spec = f"complete -c {PROG} -n {shlex.quote(condition)} -l {option.removeprefix('--')}"
    if option in command.file_options:
        return f"{spec} -r -F"
    if option in command.values:
        words = command.values[option]
        return f"{spec} -x -a {shlex.quote(_words(words))}" if words else f"{spec} -x"
    return spec


def _walk(command: Command) -> list[Command]:
    found = [command]
    for sub in command.subcommands:
        found += _walk(sub)
    return found


SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    return SCRIPTS[shell](describe(parser))
