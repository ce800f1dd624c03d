"""ARG/ENV scoping and which arguments are expanded (grammar.scope), as Docker defines them."""

from __future__ import annotations

import pytest

import grammar
from grammar.scope import GlobalScope, StageScope, platform_args


def run_stage(text: str, build_args: dict[str, str] | None = None, image_env: list[tuple[str, str]] | None = None):
    """Expanded FROM and instructions of the first stage, and the scopes."""
    recipe = grammar.parse(text)
    g = GlobalScope(recipe.global_args, build_args or {}, platform=platform_args("linux/amd64", "linux/arm64/v8"))
    stage = recipe.stages[0]
    scope = StageScope(g, image_env or [])
    return g.expand_from(stage.base), [scope.apply(i) for i in stage.instructions], scope, g


def test_global_args_reach_from_lines_only() -> None:
    base, (workdir,), _, _ = run_stage("ARG TAG=3.19\nFROM alpine:$TAG\nWORKDIR /v$TAG\n")
    assert base.image == "alpine:3.19"
    assert workdir.path == "/v"


def test_redeclared_global_arg_takes_the_global_value() -> None:
    _, (_, workdir), _, _ = run_stage("ARG TAG=3.19\nFROM alpine\nARG TAG\nWORKDIR /v$TAG\n")
    assert workdir.path == "/v3.19"


def test_build_args_override_defaults_and_unused_ones_are_reported() -> None:
    base, (_, workdir), _, g = run_stage(
        "ARG TAG=1\nFROM alpine:$TAG\nARG V=default\nWORKDIR /$V\n", {"TAG": "2", "V": "given", "NOPE": "x"}
    )
    assert (base.image, workdir.path) == ("alpine:2", "/given")
    assert g.unused_build_args() == ["NOPE"]


def test_env_wins_over_arg_and_image_env_is_inherited() -> None:
    _, (_, _, a, b), scope, _ = run_stage(
        "FROM x\nARG A=from-arg\nENV A=from-env\nWORKDIR /$A\nWORKDIR $HOME/x\n", image_env=[("HOME", "/root")]
    )
    assert (a.path, b.path) == ("/from-env", "/root/x")
    assert scope.env == {"HOME": "/root", "A": "from-env"}


def test_arg_without_value_is_unset_not_empty() -> None:
    _, (_, w1, w2), _, _ = run_stage("FROM x\nARG A\nWORKDIR /${A-unset}\nWORKDIR /${A:-empty}\n")
    assert (w1.path, w2.path) == ("/unset", "/empty")


def test_arg_defaults_see_earlier_args_on_the_same_line() -> None:
    _, (arg,), scope, _ = run_stage("FROM x\nARG A=1 B=${A}2\n")
    assert scope.args == {"A": "1", "B": "12"}


def test_platform_args() -> None:
    base, (_, workdir, w2), _, _ = run_stage(
        "FROM --platform=$BUILDPLATFORM x:$TARGETARCH\nARG TARGETARCH\nWORKDIR /$TARGETARCH\nWORKDIR /$TARGETOS\n"
    )
    assert (base.platform, base.image, workdir.path, w2.path) == ("linux/amd64", "x:arm64", "/arm64", "/")
    assert platform_args("linux/arm64/v8")["BUILDVARIANT"] == "v8"


def test_proxy_args_need_no_declaration() -> None:
    _, (workdir,), scope, g = run_stage("FROM x\nWORKDIR /$HTTP_PROXY\n", {"HTTP_PROXY": "p"})
    assert workdir.path == "/p" and g.unused_build_args() == []


@pytest.mark.parametrize(
    ("instruction", "field", "expected"),
    [
        ("COPY --from=$S --chown=$U:$U --chmod=$M --exclude=$X $A/b /$A/", None, None),
        ("ADD --checksum=$C $A /d", "checksum", "sha256:x"),
        ("EXPOSE $P 9$A", "ports", ("80", "443", "9a")),
        ("VOLUME /$A /b", "paths", ("/a", "/b")),
        ("USER $U", "user", "u"),
        ("STOPSIGNAL SIG$A", "signal", "SIGa"),
        ("LABEL $A=$U", "pairs", (("a", "u"),)),
        ("RUN --network=$N --mount=type=cache,target=/$A echo $A", None, None),
        ("CMD echo $A", "command", grammar.ShellForm("echo $A")),
        ('ENTRYPOINT ["$A"]', "command", grammar.ExecForm(("$A",))),
        ("HEALTHCHECK CMD $A", "test", grammar.ShellForm("$A")),
        ("MAINTAINER $A", "name", "$A"),
        ("ONBUILD RUN $A", "expression", "RUN $A"),
    ],
)
def test_which_arguments_expand(instruction: str, field: str | None, expected: object) -> None:
    text = "FROM x\nARG A=a U=u M=755 X=*.md S=st C=sha256:x P='80 443' N=none\n" + instruction + "\n"
    _, (_, result), _, _ = run_stage(text)
    if field is not None:
        assert getattr(result, field) == expected
    elif isinstance(result, grammar.Copy):
        assert (result.from_stage, result.chown, result.chmod, result.exclude, result.sources, result.dest) == (
            "st", "u:u", "755", ("*.md",), ("a/b",), "/a/",
        )
    else:
        assert (result.network, result.mounts[0].fields[1], result.command) == (
            "none", ("target", "/a"), grammar.ShellForm("echo $A"),
        )


def test_heredoc_sources_are_not_expanded() -> None:
    _, (_, copy), _, _ = run_stage("FROM x\nARG A=a\nCOPY <<EOF /$A\n$A\nEOF\n")
    assert (copy.sources, copy.dest) == (("<<EOF",), "/a")


def test_expansion_errors_name_the_instruction() -> None:
    with pytest.raises(grammar.ExpansionError) as info:
        run_stage("FROM x\nWORKDIR ${NOPE:?must be set}\n")
    assert str(info.value) == "Recipefile:2:1: error: WORKDIR: NOPE: must be set"
