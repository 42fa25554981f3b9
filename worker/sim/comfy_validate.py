"""Prompt validation with the rules and error shapes of ComfyUI 0.3.64 (``execution.validate_prompt``).

:func:`validate_prompt` never raises for a bad prompt: it returns a :class:`Validation` whose ``error``
and ``node_errors`` are the exact bodies ComfyUI sends with HTTP 400 (or, for a prompt where only some
outputs are broken, with HTTP 200). Values are converted in place the way ComfyUI does (``"7"`` for an
INT becomes ``7``), so callers should pass a copy of the posted prompt.
"""
from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass, field

from worker.sim.comfy_files import Dirs, exists_annotated_filepath
from worker.sim.comfy_nodes import NodeSpec

logger = logging.getLogger(__name__)


@dataclass
class Validation:
    """The outcome of :func:`validate_prompt` (ComfyUI's 4-tuple)."""

    ok: bool
    error: dict | None
    good_outputs: list[str] = field(default_factory=list)
    node_errors: dict = field(default_factory=dict)


@dataclass
class _Context:
    prompt: dict
    specs: dict[str, NodeSpec]
    dirs: Dirs
    validated: dict = field(default_factory=dict)


def _error(type_: str, message: str, details: str, **extra: object) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": dict(extra)}


def _full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def is_link(value: object) -> bool:
    """True for a ``[node_id, slot]`` link (ComfyUI's ``is_link``: a str id and a number)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)))


def validate_prompt(prompt: object, specs: dict[str, NodeSpec], dirs: Dirs,
                    partial_targets: list[str] | None = None) -> Validation:
    """Check a posted prompt; returns ComfyUI's verdict (see module docstring)."""
    if not isinstance(prompt, dict):
        if isinstance(prompt, list) and not prompt:
            return _no_outputs()
        raise TypeError(f"prompt must be an object, got {type(prompt).__name__}")
    outputs, whole_error = _find_outputs(prompt, specs, partial_targets)
    if whole_error is not None:
        return Validation(False, whole_error)
    if not outputs:
        return _no_outputs()
    ctx = _Context(prompt, specs, dirs)
    good, failed, node_errors = [], [], {}
    for out in outputs:
        valid, reasons = _validate_output(ctx, out)
        if valid:
            good.append(out)
        else:
            failed.append((out, reasons))
            _collect_node_errors(ctx, out, reasons, node_errors)
    if good:
        return Validation(True, None, good, node_errors)
    details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
    error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
    return Validation(False, error, [], node_errors)


def _no_outputs() -> Validation:
    return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs", ""))


def _find_outputs(prompt: dict, specs: dict[str, NodeSpec],
                  partial_targets: list[str] | None) -> tuple[list[str], dict | None]:
    """The output node ids, or a whole-prompt ``invalid_prompt`` error."""
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return [], _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                              f"Node ID '#{node_id}'")
        class_type = node["class_type"]
        spec = specs.get(class_type) if isinstance(class_type, str) else None
        if spec is None:
            return [], _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                              f"Node ID '#{node_id}'")
        if spec.output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    return outputs, None


def _validate_output(ctx: _Context, out: str) -> tuple[bool, list[dict]]:
    """Validate one output node and everything upstream; an exception becomes its own reason."""
    try:
        return _validate_inputs(ctx, out)
    except Exception as ex:  # noqa: BLE001 - ComfyUI turns any validation crash into a reason
        typ, _, tb = sys.exc_info()
        reasons = [_error("exception_during_validation", "Exception when validating node", str(ex),
                          exception_type=_full_type_name(typ), traceback=traceback.format_tb(tb))]
        ctx.validated[out] = (False, reasons)
        return False, reasons


def _collect_node_errors(ctx: _Context, out: str, reasons: list[dict], node_errors: dict) -> None:
    """Log like ComfyUI and file every node with reasons under ``node_errors`` (dependent_outputs += out)."""
    logger.error("Failed to validate prompt for output %s:", out)
    if reasons:
        logger.error("* (prompt):")
        for reason in reasons:
            logger.error("  - %s: %s", reason["message"], reason["details"])
    for node_id, (valid, node_reasons) in ctx.validated.items():
        if valid or not node_reasons:
            continue
        if node_id not in node_errors:
            class_type = ctx.prompt[node_id]["class_type"]
            node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [], "class_type": class_type}
            logger.error("* %s %s:", class_type, node_id)
            for reason in node_reasons:
                logger.error("  - %s: %s", reason["message"], reason["details"])
        node_errors[node_id]["dependent_outputs"].append(out)
    logger.error("Output will be ignored")


def _validate_inputs(ctx: _Context, node_id: str) -> tuple[bool, list[dict]]:
    """ComfyUI's ``validate_inputs``: (valid, reasons) for one node, recursing into linked nodes."""
    if node_id in ctx.validated:
        return ctx.validated[node_id]
    node = ctx.prompt[node_id]
    inputs = node["inputs"]
    spec = ctx.specs[node["class_type"]]
    errors: list[dict] = []
    valid = True
    for name, type_, cfg, category in spec.inputs():
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if isinstance(value, list):
            valid = _check_link(ctx, name, type_, cfg, value, errors) and valid
        else:
            _check_value(spec, inputs, name, type_, cfg, errors)
    errors += _custom_validation(ctx, spec, inputs)
    result = (not errors and valid, errors)
    ctx.validated[node_id] = result
    return result


def _check_link(ctx: _Context, name: str, type_: object, cfg: dict, value: list, errors: list[dict]) -> bool:
    """Check one linked input; appends reasons, returns False when the upstream node is invalid."""
    info = [type_, cfg]
    if len(value) != 2:
        errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                             name, input_name=name, input_config=info, received_value=value))
        return True
    from_id = value[0]
    from_class = ctx.prompt[from_id]["class_type"]  # KeyError for a missing node, as in ComfyUI
    received = ctx.specs[from_class].outputs[value[1]]  # IndexError for a bad slot
    if not _types_match(received, type_):
        errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                             f"{name}, received_type({received}) mismatch input_type({type_})",
                             input_name=name, input_config=info, received_type=received, linked_node=value))
        return True
    try:
        return _validate_inputs(ctx, from_id)[0]
    except Exception as ex:  # noqa: BLE001 - mirrors ComfyUI's exception_during_inner_validation
        typ, _, tb = sys.exc_info()
        reasons = [_error("exception_during_inner_validation", "Exception when validating inner node", str(ex),
                          input_name=name, input_config=info, exception_message=str(ex),
                          exception_type=_full_type_name(typ), traceback=traceback.format_tb(tb),
                          linked_node=value)]
        ctx.validated[from_id] = (False, reasons)
        return False


def _types_match(received: str, wanted: object) -> bool:
    """ComfyUI's ``validate_node_input`` (non-strict); a link into a combo is accepted here."""
    if isinstance(wanted, list) or received == wanted:
        return True
    if not isinstance(wanted, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in wanted.split(",")}
    return "*" in got or "*" in want or bool(got & want)


_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_value(spec: NodeSpec, inputs: dict, name: str, type_: object, cfg: dict, errors: list[dict]) -> None:
    """Convert a widget value in place and check min/max/choices; appends at most one reason."""
    info = [type_, cfg]
    value = inputs[name]
    if isinstance(value, dict) and "__value__" in value:
        value = inputs[name] = value["__value__"]
    convert = _CONVERT.get(type_) if isinstance(type_, str) else None
    if convert is not None:
        try:
            value = inputs[name] = convert(value)
        except Exception as ex:  # noqa: BLE001 - any conversion failure is reported, not raised
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {type_} value",
                                 f"{name}, {value}, {ex}", input_name=name, input_config=info,
                                 received_value=value, exception_message=str(ex)))
            return
    if name in spec.custom_validated:
        return
    reason = _range_reason(name, value, info, cfg) or _choice_reason(name, value, info, type_, cfg)
    if reason is not None:
        errors.append(reason)


def _range_reason(name: str, value: object, info: list, cfg: dict) -> dict | None:
    try:
        if "min" in cfg and value < cfg["min"]:
            return _error("value_smaller_than_min", f"Value {value} smaller than min of {cfg['min']}", name,
                          input_name=name, input_config=info, received_value=value)
        if "max" in cfg and value > cfg["max"]:
            return _error("value_bigger_than_max", f"Value {value} bigger than max of {cfg['max']}", name,
                          input_name=name, input_config=info, received_value=value)
    except TypeError:
        return None
    return None


def _choice_reason(name: str, value: object, info: list, type_: object, cfg: dict) -> dict | None:
    options = cfg.get("options", []) if type_ == "COMBO" else type_
    if not isinstance(options, list) or not options or value in options:
        return None
    if len(options) > 20:
        listed, info = f"(list of length {len(options)})", None
    else:
        listed = str(options)
    return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                  input_name=name, input_config=info, received_value=value)


def _custom_validation(ctx: _Context, spec: NodeSpec, inputs: dict) -> list[dict]:
    """LoadImage's ``VALIDATE_INPUTS``: the image file must exist in the input directory."""
    if spec.name != "LoadImage" or not isinstance(inputs.get("image"), str):
        return []
    image = inputs["image"]
    if exists_annotated_filepath(image, ctx.dirs):
        return []
    return [_error("custom_validation_failed", "Custom validation failed for node",
                   f"image - Invalid image file: {image}", input_name="image")]

