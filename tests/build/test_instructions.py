"""Every instruction end to end: the image config and history a build records, and the files its steps leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import BaseImageError, BuildError, StepFailed
from store.image import Healthcheck
from tests.build.conftest import flatten, pybuild


def test_config_instructions_are_recorded(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        MAINTAINER someone <a@example.com>
        ENV A=1 PATH=/usr/local/bin:/bin:/usr/bin
        LABEL org.example.x="y z"
        EXPOSE 80 53/udp
        VOLUME ["/data"]
        USER 1000:1000
        WORKDIR /srv/app
        STOPSIGNAL SIGQUIT
        SHELL ["/bin/sh", "-ec"]
        HEALTHCHECK --interval=5s --retries=2 CMD test -e /tmp
        ONBUILD RUN echo from-trigger > /triggered
        ENTRYPOINT ["/bin/echo"]
        CMD hello
        """,
        tags=["configured-build"],
    )
    config = result.config.config
    assert config.env == ("A=1", "PATH=/usr/local/bin:/bin:/usr/bin")
    assert dict(config.labels) == {"org.example.x": "y z"}
    assert config.exposed_ports == ("80/tcp", "53/udp")
    assert config.volumes == ("/data",)
    assert (config.user, config.working_dir, config.stop_signal) == ("1000:1000", "/srv/app", "SIGQUIT")
    assert config.shell == ("/bin/sh", "-ec")
    assert config.healthcheck == Healthcheck(test=("CMD-SHELL", "test -e /tmp"), interval=5 * 10**9, retries=2)
    assert config.on_build == ("RUN echo from-trigger > /triggered",)
    assert (config.entrypoint, config.cmd) == (("/bin/echo",), ("/bin/sh", "-ec", "hello"))
    assert result.config.author == "someone <a@example.com>"
    created_by = [h.created_by for h in result.config.history]
    assert created_by[-3:] == ['ONBUILD RUN echo from-trigger > /triggered', 'ENTRYPOINT ["/bin/echo"]', 'CMD ["/bin/sh","-ec","hello"]']
    # WORKDIR made its directory; the layer holds it, with its parents
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "srv" / "app").is_dir()
    # Docker's extension fields are in the stored OCI config JSON
    stored = json.loads(pybuild("inspect", "--json", "configured-build", store=fresh_store).stdout)
    text = json.dumps(stored)
    assert "Healthcheck" in text and "OnBuild" in text and '"Shell"' in text


def test_run_sees_env_args_workdir_user_and_writes_a_layer(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        ARG WHO=nobody-default
        ENV GREETING=hi
        WORKDIR /work
        RUN echo "$GREETING $WHO $(pwd) $(id -u)" > out.txt && rm /bin/true
        USER 65534
        RUN id -u > /tmp/uid
        """,
        build_args={"WHO": "builder"},
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "work" / "out.txt").read_text() == "hi builder /work 0\n"
    assert (tree / "tmp" / "uid").read_text() == "65534\n"
    assert not (tree / "bin" / "true").exists()  # the whiteout of a lower-layer file
    assert "WHO" not in " ".join(result.config.config.env)  # ARGs do not persist
    assert len(result.config.diff_ids) == 4  # busybox, WORKDIR, two RUNs


def test_exec_form_heredoc_and_shell(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        '''
        FROM busybox
        RUN ["/bin/sh", "-c", "echo exec > /exec"]
        RUN <<EOF
        echo one > /heredoc
        echo two >> /heredoc
        EOF
        RUN cat > /written <<EOT
        inline body
        EOT
        SHELL ["/bin/sh", "-ec"]
        RUN echo "shell form" > /shelled
        '''
    )
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "exec").read_text() == "exec\n"
    assert (tree / "heredoc").read_text() == "one\ntwo\n"
    assert (tree / "written").read_text() == "inline body\n"
    assert (tree / "shelled").read_text() == "shell form\n"


def test_heredoc_with_a_shebang_runs_its_interpreter(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox
        RUN <<EOF
        #!/bin/sh
        echo "$0" > /script-name
        EOF
        """
    )
    assert (flatten(fresh_store, result, tmp_path / "tree") / "script-name").read_text() == "/run/pybuild-heredoc/EOF\n"


def test_onbuild_triggers_run_in_the_child_build(make_build, fresh_store, tmp_path: Path) -> None:
    make_build(
        """
        FROM busybox
        ONBUILD RUN echo triggered > /triggered
        """,
        tags=["parent-image"],
    )
    result = make_build("FROM parent-image\nRUN cat /triggered > /copied\n")
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "copied").read_text() == "triggered\n"
    assert result.config.config.on_build == ()  # triggers do not pass to grandchildren


def test_multi_stage_target_and_skipped_stages(make_build, fresh_store, tmp_path: Path) -> None:
    recipe = """
        FROM busybox AS base
        RUN echo base > /base
        FROM base AS unused
        RUN echo unused > /unused && exit 1
        FROM base AS final
        RUN cat /base > /final
        FROM busybox AS other
        RUN echo other > /other
        """
    result = make_build(recipe, target="final")
    tree = flatten(fresh_store, result, tmp_path / "tree")
    assert (tree / "final").read_text() == "base\n"
    stages = {s.stage for s in result.steps}
    assert stages == {"base", "final"}
    with pytest.raises(StepFailed):
        make_build(recipe, target="unused")
    with pytest.raises(BuildError, match="target stage 'nope' not found"):
        make_build(recipe, target="nope")


def test_run_mounts_cache_tmpfs_and_secret(make_build, fresh_store, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-value")
    from builder.run_mounts import Secret

    recipe = """
        FROM busybox
        ARG N=1
        RUN --mount=type=cache,target=/cache echo "$N" >> /cache/runs && cat /cache/runs | wc -l > /count
        RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && ls /scratch > /listing
        RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /secret-size
        RUN --mount=type=secret,id=token,env=TOKEN test "${#TOKEN}" = 12 && echo ok > /env-ok
        """
    secrets = {"token": Secret("token", path=str(secret))}
    first = make_build(recipe, secrets=secrets)
    second = make_build(recipe, secrets=secrets, build_args={"N": "2"})
    tree = flatten(fresh_store, second, tmp_path / "tree")
    assert (tree / "count").read_text().strip() == "2"  # the cache mount outlived the first build
    assert (tree / "listing").read_text() == "x\n"
    assert not (tree / "scratch").exists() or not any((tree / "scratch").iterdir())
    assert (tree / "secret-size").read_text().strip() == "12"
    assert (tree / "env-ok").read_text() == "ok\n"
    assert not (tree / "run" / "secrets" / "token").exists()
    layers = b"".join(p.read_bytes() for p in (fresh_store.root / "blobs" / "sha256").iterdir())
    assert b"s3cret-value" not in layers  # compressed, but a secret must not be in any blob at all
    assert first.digest != second.digest


def test_unsupported_flags_fail_loudly(make_build) -> None:
    with pytest.raises(BuildError, match="from=.*not supported yet"):
        make_build("FROM busybox\nRUN --mount=type=cache,target=/c,from=x true\n")
    with pytest.raises(BuildError, match="--security=insecure"):
        make_build("FROM busybox\nRUN --security=insecure true\n")
    with pytest.raises(BuildError, match="mount type not supported"):
        make_build("FROM busybox\nRUN --mount=type=ssh true\n")


def test_failing_run_names_step_location_status_and_output(make_build) -> None:
    with pytest.raises(StepFailed) as failure:
        make_build("FROM busybox\n\nRUN echo about to fail && echo on stderr >&2 && exit 3\n")
    error = failure.value
    assert error.located().endswith("/Recipefile:3:1: error: RUN failed: exit status 3 (step #2 [0 2/2])")
    assert error.output == ("about to fail", "on stderr") or set(error.output) == {"about to fail", "on stderr"}
    assert error.log and Path(error.log).read_text().count("about to fail") == 1


def test_missing_base_image(make_build) -> None:
    with pytest.raises(BaseImageError, match="base image 'nothere' is not in the store"):
        make_build("FROM nothere\nRUN true\n")


def test_scratch_and_network_none(make_build, fresh_store, tmp_path: Path) -> None:
    result = make_build(
        """
        FROM busybox AS tools
        RUN --network=none sh -c 'ls /sys/class/net > /nets'
        FROM scratch
        """,
        target="tools",
    )
    assert (flatten(fresh_store, result, tmp_path / "tree") / "nets").read_text().split() == ["lo"]
    empty = make_build("FROM scratch\nLABEL empty=yes\n")
    assert empty.config.diff_ids == ()
