"""Checks across instructions: FROM first, stage names, `--from` references.

`assemble` groups typed instructions into a `Recipe` and rejects what no
single instruction can see wrong on its own.
"""

from __future__ import annotations

import re

from .errors import RecipeValidationError
from .instructions import Arg, Copy, From, Instruction, Recipe, Run, Stage
from .source import Source, Span
from .suggest import did_you_mean
from .syntax import Directive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["assemble", "is_image_reference"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    rf"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def is_image_reference(text: str) -> bool:
    """Whether `text` is a valid image reference (`name[:tag][@digest]`, Docker's grammar)."""
    return len(text) <= 255 and _REFERENCE.fullmatch(text) is not None


def assemble(source: Source, directives: tuple[Directive, ...], instructions: Iterable[Instruction]) -> Recipe:
    """Group instructions into stages and check the references between them."""
    global_args: list[Arg] = []
    stages: list[Stage] = []
    base: From | None = None
    body: list[Instruction] = []
    for instruction in instructions:
        if type(instruction) is From:
            if base is not None:
                stages.append(Stage(len(stages), base, tuple(body)))
            base, body = instruction, []
        elif base is None:
            if type(instruction) is not Arg:
                keyword = type(instruction).__name__.upper()
                raise RecipeValidationError(
                    f"{keyword} before the first FROM",
                    instruction.span,
                    hint="a recipe starts with FROM; only ARG may come before it",
                )
            global_args.append(instruction)
        else:
            body.append(instruction)
    if base is None:
        raise RecipeValidationError(
            "no FROM instruction: a recipe needs at least one build stage",
            Span(source.name, 1, 1, 1, 1),
            hint="start the recipe with FROM IMAGE (FROM scratch for an empty one)",
        )
    stages.append(Stage(len(stages), base, tuple(body)))
    _check_stages(stages)
    return Recipe(source, directives, tuple(global_args), tuple(stages))


def _check_stages(stages: list[Stage]) -> None:
    first_use: dict[str, Stage] = {}
    for stage in stages:
        name = stage.name
        if name is not None:
            if name in first_use:
                raise RecipeValidationError(
                    f'duplicate stage name "{name}" (first used on line {first_use[name].base.span.line})',
                    stage.base.span,
                )
            first_use[name] = stage
    for stage in stages:
        _check_image(stage.base.image, stage.base.span, first_use, stage, "FROM")
        for instruction in stage.instructions:
            if type(instruction) is Copy and instruction.from_stage is not None:
                _check_from(instruction.from_stage, instruction.span, first_use, stage, "COPY --from")
            elif type(instruction) is Run:
                for mount in instruction.mounts:
                    for key, value in mount.fields:
                        if key == "from" and value:
                            _check_from(value, instruction.span, first_use, stage, "RUN --mount from")


def _check_image(image: str, span: Span, stages: dict[str, Stage], current: Stage, what: str) -> None:
    if "$" in image or image.lower() in stages or image == "scratch":
        return
    if not is_image_reference(image):
        raise RecipeValidationError(
            f'{what} {image}: invalid image reference "{image}"',
            span,
            hint="image names are lower case, like registry.example:5000/team/app:1.2",
        )


def _check_from(ref: str, span: Span, stages: dict[str, Stage], current: Stage, what: str) -> None:
    if "$" in ref:
        return
    if ref.isdigit() and ref.isascii():
        index = int(ref) if len(ref) < 10 else current.index
        if index >= current.index:
            raise RecipeValidationError(
                f"{what}={ref}: only stages 0 to {current.index - 1} come before this one"
                if current.index
                else f"{what}={ref}: no stage comes before this one",
                span,
            )
        return
    target = stages.get(ref.lower())
    if target is not None:
        if target.index >= current.index:
            where = "the stage it is in" if target is current else "a stage defined after it"
            raise RecipeValidationError(f'{what}={ref} refers to {where}: "{target.name}"', span)
        return
    if not is_image_reference(ref):
        suggestion = did_you_mean(ref, [s for s, st in stages.items() if st.index < current.index])
        raise RecipeValidationError(
            f'{what}={ref}: no stage or image named "{ref}"',
            span,
            hint=f"did you mean {suggestion}?" if suggestion else "name an earlier stage (FROM ... AS name) or an image",
        )
