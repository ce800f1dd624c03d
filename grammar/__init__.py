"""The Recipefile language (Dockerfile syntax, BuildKit dialect): text to typed instructions.

Two levels, as in BuildKit:

    parse_syntax(text)  the syntax tree exactly as BuildKit's parser builds it
                        (what `pybuild parse --json` prints); fails only where
                        that parser fails
    parse(text)         typed, checked instructions grouped into stages: a
                        `Recipe`; fails with a RecipeError naming file:line:col

Both accept `str` or UTF-8 `bytes`. Variable substitution is separate
(`grammar.scope`), because it needs build arguments and base-image env.

    >>> from grammar import parse
    >>> recipe = parse(b"FROM busybox\\nRUN echo hi\\n")
    >>> [type(i).__name__ for i in recipe.stages[0].instructions]
    ['Run']

This package imports neither `builder` nor `store`. Its names load on first use
(PEP 562), so importing one light module (`grammar.record`) costs nothing
else: `pybuild parse` and `pybuild run` must start fast.
"""

from __future__ import annotations

_NAMES = {  # submodule: the public names it defines
    "api": "parse parse_file parse_syntax",
    "errors": "ExpansionError RecipeError RecipeSyntaxError RecipeValidationError UnknownInstructionError",
    "instructions": "Add Arg ArgDecl Cmd Command Copy Entrypoint Env ExecForm Expose From Healthcheck Heredoc"
    " Instruction Label Maintainer MountSpec Onbuild Recipe Run Shell ShellForm Stage Stopsignal User Volume Workdir",
    "source": "Source Span",
    "syntax": "Directive SyntaxNode SyntaxTree dump to_json",
}
_EXPORTS = {name: module for module, names in _NAMES.items() for name in names.split()}

__all__ = [
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Command",
    "Copy",
    "Directive",
    "Entrypoint",
    "Env",
    "ExecForm",
    "ExpansionError",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Label",
    "Maintainer",
    "MountSpec",
    "Onbuild",
    "Recipe",
    "RecipeError",
    "RecipeSyntaxError",
    "RecipeValidationError",
    "Run",
    "Shell",
    "ShellForm",
    "Source",
    "Span",
    "Stage",
    "Stopsignal",
    "SyntaxNode",
    "SyntaxTree",
    "UnknownInstructionError",
    "User",
    "Volume",
    "Workdir",
    "dump",
    "parse",
    "parse_file",
    "parse_syntax",
    "to_json",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grammar' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
