"""Command-line options generated from a pydantic settings model, so a method's settings are declared once.

A field `p_gap: float = Field(0.2, description="...")` becomes the option `--p-gap` (its type, its default, its
description as help); a bool becomes `--x/--no-x`, a Literal a choice, a Path a path. The model alone validates
(ranges, cross-field rules); a bad value is reported as the option the user gave.

Typer reads a command's options from its function signature and knows nothing of pydantic, so `model_options`
builds that signature (inspect.Signature, one typer.Option per field) instead of a hand-written copy of the model.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from phiforge.errors import UserError

M = TypeVar("M", bound=BaseModel)
GIVEN = "given"  # the parameter a decorated command receives the settings options the user gave in
OTHERS_SET = "others_set"  # if it takes it: the other options the user gave (their flags)
CONTEXT = "typer_context"  # typer hands the command's context to a parameter of type typer.Context


def _set_by_user(ctx: typer.Context, name: str) -> bool:
    # (by name: typer 0.29 carries its own copy of click, whose ParameterSource is not click's)
    return ctx.get_parameter_source(name).name == "COMMANDLINE"


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _choices(annotation: Any) -> tuple | None:
    """A Literal field's values (through Annotated and Optional), else None."""
    origin = get_origin(annotation)
    if origin is Literal:
        return get_args(annotation)
    if origin is Annotated or origin in (Union, types.UnionType):
        return next((c for c in map(_choices, get_args(annotation)) if c), None)
    return None


def _parsed_type(annotation: Any) -> Any:
    """The type typer parses an option as: the field's type without pydantic's constraints (the model checks those).
    A Literal is parsed as a string and checked by the model too, so a bad choice gets the same message anywhere."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _parsed_type(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no command-line option for a field of type {annotation}: one type (or None) only")
        return Optional[_parsed_type(args[0])]
    if origin is Literal:
        return type(get_args(annotation)[0])
    if origin is tuple:
        return tuple[tuple(_parsed_type(a) for a in get_args(annotation))]
    if origin is list:
        return list[_parsed_type(get_args(annotation)[0])]
    if isinstance(annotation, type):
        return annotation
    raise TypeError(f"no command-line option for a field of type {annotation}")


def _parameter(model: type[BaseModel], name: str) -> inspect.Parameter:
    field = model.model_fields[name]
    if not field.description:
        raise TypeError(f"{model.__name__}.{name} has no description: give it Field(description=...), its --help")
    parsed = _parsed_type(field.annotation)
    default = field.get_default(call_default_factory=True)
    if default is PydanticUndefined:  # a required field: the model says it is missing
        default, parsed = None, Optional[parsed]
    decls = [f"{option_name(name)}/--no-{name.replace('_', '-')}"] if parsed is bool else [option_name(name)]
    choices = _choices(field.annotation)
    option = typer.Option(*decls, help=field.description, metavar="|".join(map(str, choices)) if choices else None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[parsed, option])


def model_options(*models: type[BaseModel], exclude: Collection[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a typer command: beside its own parameters it takes one option per field of `models` (less
    `exclude`), and is called with `given`: the fields the user set on the command line, name -> value (unset
    options are left out, so a recipe's values or the model's defaults stand), and, if it has an `others_set`
    parameter, the flags of its own options the user set."""
    owner: dict[str, type[BaseModel]] = {}  # field name -> the model declaring it, in the models' order
    for m in models:
        owner |= {n: m for n in m.model_fields if n not in exclude and n not in owner}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(fn, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name not in (GIVEN, OTHERS_SET)]
        clash = {p.name for p in kept} & set(owner)
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are also settings fields")
        generated = [_parameter(m, n) for n, m in owner.items()]
        context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            ctx = values.pop(CONTEXT)
            extra: dict[str, Any] = {GIVEN: {n: values[n] for n in owner if _set_by_user(ctx, n)}}
            if OTHERS_SET in own.parameters:
                extra[OTHERS_SET] = [p.opts[0] for p in ctx.command.params if p.param_type_name == "option"
                                     and p.name not in owner and _set_by_user(ctx, p.name)]
            return fn(**{k: v for k, v in values.items() if k not in owner}, **extra)

        command.__signature__ = own.replace(parameters=[*kept, *generated, context])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}  # type: ignore[attr-defined]
        return command

    return decorate


def validated(model: type[M], given: dict[str, Any]) -> M:
    """`model` from the options in `given` that are its fields; a bad value is one line naming its option."""
    try:
        return model.model_validate({k: v for k, v in given.items() if k in model.model_fields})
    except ValidationError as e:
        raise UserError(_option_error(model, e)) from None


def _option_error(model: type[BaseModel], e: ValidationError) -> str:
    err = e.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return msg  # a rule over several fields names them itself
    name = str(err["loc"][0])
    choices = _choices(model.model_fields[name].annotation) if name in model.model_fields else None
    if err["type"] == "literal_error" and choices:
        return f"{option_name(name)} {err['input']!r}: use {', '.join(map(str, choices[:-1]))} or {choices[-1]}"
    return f"{option_name(name)}: {msg}"


def overridden(section: M, given: dict[str, Any]) -> M:
    """A recipe section with the options the user gave in place of its values, validated again."""
    return validated(type(section), section.model_dump() | given)
