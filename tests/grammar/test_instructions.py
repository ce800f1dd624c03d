"""Typed instructions: what each instruction means, and the errors pybuild's checks add."""

from __future__ import annotations

import pytest

import grammar
from grammar import (
    Add,
    ArgDecl,
    Copy,
    Env,
    ExecForm,
    Healthcheck,
    Label,
    MountSpec,
    Onbuild,
    Run,
    ShellForm,
)


def only(text: str) -> object:
    """The one instruction after `FROM base`."""
    (instruction,) = grammar.parse("FROM base\n" + text).stages[0].instructions
    return instruction


def test_from_with_alias_and_platform() -> None:
    base = grammar.parse("FROM --platform=$BUILDPLATFORM golang:1.22 As Build\n").stages[0].base
    assert (base.image, base.alias, base.platform) == ("golang:1.22", "build", "$BUILDPLATFORM")


def test_run_forms_flags_and_heredoc() -> None:
    run = only("RUN --mount=type=cache,target=/root/.cache,sharing=locked --network=none <<EOF\nmake\nEOF\n")
    assert isinstance(run, Run)
    assert run.command == ShellForm("<<EOF")
    assert run.mounts == (MountSpec((("type", "cache"), ("target", "/root/.cache"), ("sharing", "locked"))),)
    assert run.mounts[0].kind == "cache" and run.network == "none"
    assert [h.content for h in run.heredocs] == ["make\n"]
    assert only('RUN ["make", "-j2"]').command == ExecForm(("make", "-j2"))
    assert only('RUN --mount="type=bind,source=a b,target=/x" true').mounts[0].fields[1] == ("source", "a b")


def test_copy_and_add_flags() -> None:
    copy = only("COPY --from=alpine:3 --chown=app:app --chmod=0755 --link --parents --exclude=*.md --exclude=tmp a b /dst/")
    assert copy == Copy(copy.span, ("a", "b"), "/dst/", "alpine:3", "app:app", "0755", True, True, ("*.md", "tmp"))
    add = only("ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false https://x/y.tgz /opt/")
    assert isinstance(add, Add)
    assert (add.checksum, add.keep_git_dir, add.unpack, add.sources) == ("sha256:abc", True, False, ("https://x/y.tgz",))
    assert only('COPY ["a b", "/c d/"]').sources == ("a b",)


def test_env_label_arg_pairs_keep_text_as_written() -> None:
    assert only('ENV A=1 B="two words"').pairs == (("A", "1"), ("B", '"two words"'))
    assert only("ENV A two words") == Env(only("ENV A two words").span, (("A", "two words"),), True)
    assert isinstance(only("LABEL a=b"), Label)
    assert only("ARG A B=2 C=").args == (ArgDecl("A", None), ArgDecl("B", "2"), ArgDecl("C", ""))


def test_healthcheck() -> None:
    hc = only('HEALTHCHECK --interval=30s --start-interval=1s --retries=3 CMD ["curl", "-f", "x"]')
    assert hc == Healthcheck(hc.span, ExecForm(("curl", "-f", "x")), "30s", None, None, "1s", 3)
    assert only("HEALTHCHECK NONE").test is None
    assert only("HEALTHCHECK CMD curl x").test == ShellForm("curl x")


def test_onbuild_keeps_the_trigger_text() -> None:
    onbuild = only("ONBUILD COPY --from=x . /app")
    assert isinstance(onbuild, Onbuild)
    assert onbuild.expression == "COPY --from=x . /app"
    assert isinstance(onbuild.trigger, Copy)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN", "RUN requires at least one argument"),
        ("CMD", "CMD requires at least one argument"),
        ("RUN --mount=type=nfs,target=/x true", "unsupported mount type 'nfs'"),
        ("RUN --mount=type=cache true", "--mount type=cache requires a target"),
        ("RUN --security=root true", "unsupported security mode 'root'"),
        ("RUN --device=/dev/kvm true", "unknown flag for RUN: --device"),
        ("COPY --keep-git-dir a b", "unknown flag for COPY: --keep-git-dir"),
        ("ADD --from=x a b", "unknown flag for ADD: --from"),
        ("COPY --chmod=999 a b", "invalid chmod value '999'"),
        ("ENV =x", "ENV names can not be blank"),
        ("ARG =x", "ARG names can not be blank"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK --interval=5s NONE", "HEALTHCHECK NONE takes no flags"),
        ("HEALTHCHECK CMD", "HEALTHCHECK CMD requires at least one argument"),
        ("HEALTHCHECK --timeout=1us CMD x", 'Interval "timeout" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries must be a whole number"),
        ("VOLUME [\"\"]", "VOLUME specified can not be an empty string"),
        ("USER --x a", "unknown flag for USER: --x"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD RUNN x", "unknown instruction: RUNN"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("EXPOSE 80/tcp/x", "invalid containerPort: 80/tcp/x"),
        ("FROM a b", "FROM requires either one or three arguments"),
    ],
)
def test_instruction_errors(text: str, message: str) -> None:
    with pytest.raises(grammar.RecipeValidationError) as info:
        grammar.parse("FROM base\n" + text + "\n")
    assert info.value.message.startswith(message)
    assert info.value.span.line == 2


def test_shell_tests_in_brackets_are_not_mistaken_for_json() -> None:
    assert only('RUN [ "$A" = "b" ] && echo yes').command == ShellForm('[ "$A" = "b" ] && echo yes')
    assert only("RUN [ -f /etc/passwd ]").command == ShellForm("[ -f /etc/passwd ]")


def test_stage_structure() -> None:
    recipe = grammar.parse("ARG A\nARG B=1\nFROM x AS one\nRUN a\nFROM one\nCOPY --from=one /a /b\n")
    assert [a.args[0].name for a in recipe.global_args] == ["A", "B"]
    assert [(s.index, s.name, len(s.instructions)) for s in recipe.stages] == [(0, "one", 1), (1, None, 1)]
    assert grammar.parse("FROM x\nCOPY --from=nginx:1.25 /etc/nginx /n\n").stages[0].instructions[0].from_stage == "nginx:1.25"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM x\nCOPY --from=Not_An_Image! a b\n", 'COPY --from=Not_An_Image!: no stage or image named "Not_An_Image!"'),
        ("FROM x AS a\nFROM y\nCOPY --from=A /a /a\nCOPY --from=b /a /a\nFROM z AS b\n", 'COPY --from=b refers to a stage defined after it'),
        ("FROM x AS a\nFROM y\nRUN --mount=from=2,target=/x true\n", "RUN --mount from=2: only stages 0 to 0 come before this one"),
    ],
)
def test_stage_reference_errors(text: str, message: str) -> None:
    with pytest.raises(grammar.RecipeValidationError) as info:
        grammar.parse(text)
    assert info.value.message.startswith(message)
