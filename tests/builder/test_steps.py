"""Config instructions with Docker's rules (builder.steps): pure, from parsed instructions."""

from __future__ import annotations

import pytest

from builder.errors import BuildError
from builder.steps import StageDefaults, configure, created_by, set_env, workdir_of
from grammar import parse
from store.image import ContainerConfig, Healthcheck


def one(line: str):
    return parse(f"FROM scratch\n{line}\n").stages[0].instructions[0]


def apply(config: ContainerConfig, *lines: str, defaults: StageDefaults | None = None) -> ContainerConfig:
    for line in lines:
        config = configure(config, one(line), defaults or StageDefaults())
    return config


def test_env_keeps_the_place_of_a_replaced_key() -> None:
    assert apply(ContainerConfig(env=("A=1", "B=2")), "ENV A=3 C=4").env == ("A=3", "B=2", "C=4")
    assert set_env((), (("K", "v=w"),)) == ("K=v=w",)


def test_labels_merge_and_volumes_and_ports_accumulate_once() -> None:
    config = apply(ContainerConfig(labels={"a": "1"}), "LABEL b=2 a=3", "VOLUME /data /data", "EXPOSE 80 53/udp 8000-8002")
    assert dict(config.labels) == {"a": "3", "b": "2"}
    assert config.volumes == ("/data",)
    assert config.exposed_ports == ("80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp")


@pytest.mark.parametrize("port", ["70000", "80/icmp", "9-1"])
def test_bad_ports_are_build_errors(port: str) -> None:
    with pytest.raises(BuildError, match="EXPOSE"):
        apply(ContainerConfig(), f"EXPOSE {port}")


def test_workdir_is_relative_to_the_previous_one() -> None:
    assert apply(ContainerConfig(), "WORKDIR /a", "WORKDIR b", "WORKDIR ../c").working_dir == "/a/c"
    assert workdir_of("", "x") == "/x"


def test_cmd_and_entrypoint_forms_and_shell() -> None:
    shell = StageDefaults(shell=("/bin/bash", "-o", "pipefail", "-c"))
    assert apply(ContainerConfig(), "CMD echo hi", defaults=shell).cmd == ("/bin/bash", "-o", "pipefail", "-c", "echo hi")
    assert apply(ContainerConfig(), 'ENTRYPOINT ["/app", "-v"]').entrypoint == ("/app", "-v")


def test_entrypoint_drops_an_inherited_cmd_but_not_one_set_in_the_stage() -> None:
    base = ContainerConfig(cmd=("sh",))
    assert apply(base, 'ENTRYPOINT ["x"]').cmd is None
    assert apply(base, 'ENTRYPOINT ["x"]', defaults=StageDefaults(cmd_inherited=False)).cmd == ("sh",)


def test_extension_fields_are_kept() -> None:
    config = apply(
        ContainerConfig(),
        'SHELL ["/bin/ash", "-c"]',
        "HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD wget -q localhost",
        "ONBUILD RUN echo triggered",
        "STOPSIGNAL SIGTERM",
        "USER 1000:1000",
    )
    assert config.shell == ("/bin/ash", "-c")
    assert config.healthcheck == Healthcheck(
        test=("CMD-SHELL", "wget -q localhost"), interval=90 * 10**9, timeout=500 * 10**6, retries=3
    )
    assert config.on_build == ("RUN echo triggered",)
    assert (config.stop_signal, config.user) == ("SIGTERM", "1000:1000")
    assert apply(config, "HEALTHCHECK NONE").healthcheck == Healthcheck(test=("NONE",))
    assert config.to_json()["Healthcheck"]["Test"] == ["CMD-SHELL", "wget -q localhost"]


def test_history_lines_read_like_buildkit() -> None:
    assert created_by(one("RUN make all")) == "RUN /bin/sh -c make all # buildkit"
    assert created_by(one('RUN ["make", "all"]')) == 'RUN ["make","all"] # buildkit'
    assert created_by(one("COPY --chown=1:2 a b /dst/")) == "COPY --chown=1:2 a b /dst/ # buildkit"
    assert created_by(one("ENV A=1 B=2")) == "ENV A=1 B=2"
    assert created_by(one('CMD ["sh"]')) == 'CMD ["sh"]'
    assert created_by(one("EXPOSE 80")) == "EXPOSE map[80/tcp:{}]"
    assert created_by(one("WORKDIR /x")) == "WORKDIR /x"
