# Stand-in for Comfy-Org/ComfyUI execution.py at a125cd84b054a57729b5eecab930ca9408719832: how a
# prompt (API-format workflow) is checked before anything runs (validate_prompt, validate_inputs;
# comfy_execution/validation.py validate_node_input).
# Kept faithful, for V1 nodes: every class known; at least one output node; per node, every
# required input present; a link [node_id, output_index] must name an output whose type matches
# the input's ("*" or a shared type in "T1,T2" lists), and its node is checked in turn; a widget
# value is converted to the input's type (INT, FLOAT, STRING, BOOLEAN), then checked against min,
# max and a list of choices, except for inputs that VALIDATE_INPUTS takes, which ComfyUI leaves to
# it; VALIDATE_INPUTS is called with the inputs it names (None for a linked one), and anything but
# True becomes one error per input it takes, "<input> - <message>".
# Simplified: synchronous; no V3 nodes, lazy inputs, hidden inputs or "__value__" wrapping.
import inspect

import nodes


def validate_node_input(received_type, input_type) -> bool:
    if not received_type != input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    if "*" in (received_type, input_type):
        return True
    return bool({t.strip() for t in received_type.split(",")} & {t.strip() for t in input_type.split(",")})


def _input_info(class_inputs, name):
    for category in ("required", "optional"):
        if name in class_inputs.get(category, {}):
            entry = class_inputs[category][name]
            return entry[0], category, (entry[1] if len(entry) > 1 else {})
    return None, None, None


CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _is_link(value):
    return isinstance(value, list)


def validate_inputs(prompt, unique_id, validated):
    if unique_id in validated:
        return validated[unique_id]
    inputs = prompt[unique_id]["inputs"]
    obj_class = nodes.NODE_CLASS_MAPPINGS[prompt[unique_id]["class_type"]]
    class_inputs = obj_class.INPUT_TYPES()
    valid_inputs = set(class_inputs.get("required", {})) | set(class_inputs.get("optional", {}))
    errors, valid = [], True

    validate_function = getattr(obj_class, "VALIDATE_INPUTS", None)
    validate_function_inputs, validate_has_kwargs = [], False
    if validate_function is not None:
        argspec = inspect.getfullargspec(validate_function)
        validate_function_inputs, validate_has_kwargs = argspec.args, argspec.varkw is not None

    for x in valid_inputs:
        input_type, input_category, extra_info = _input_info(class_inputs, x)
        if x not in inputs:
            if input_category == "required":
                errors.append({"type": "required_input_missing", "details": x})
            continue
        val = inputs[x]
        if _is_link(val):
            if len(val) != 2:
                errors.append({"type": "bad_linked_input", "details": x})
                continue
            o_id = val[0]
            if o_id not in prompt:
                errors.append({"type": "bad_linked_input", "details": f"{x}: node {o_id} is not in the prompt"})
                continue
            return_types = nodes.NODE_CLASS_MAPPINGS[prompt[o_id]["class_type"]].RETURN_TYPES
            if not 0 <= val[1] < len(return_types):
                errors.append({"type": "bad_linked_input", "details": f"{x}: node {o_id} has no output {val[1]}"})
                continue
            received_type = return_types[val[1]]
            if not validate_node_input(received_type, input_type):
                errors.append({"type": "return_type_mismatch", "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})"})
                continue
            if validate_inputs(prompt, o_id, validated)[0] is False:
                valid = False
            continue
        try:
            if isinstance(input_type, str) and input_type in CONVERT:
                val = CONVERT[input_type](val)
                inputs[x] = val
        except Exception as ex:
            errors.append({"type": "invalid_input_type", "details": f"{x}, {val}, {ex}"})
            continue
        if x not in validate_function_inputs and not validate_has_kwargs:
            if "min" in extra_info and val < extra_info["min"]:
                errors.append({"type": "value_smaller_than_min", "details": x, "message": f"Value {val} smaller than min of {extra_info['min']}"})
            elif "max" in extra_info and val > extra_info["max"]:
                errors.append({"type": "value_bigger_than_max", "details": x, "message": f"Value {val} bigger than max of {extra_info['max']}"})
            elif isinstance(input_type, list) and val not in input_type:
                errors.append({"type": "value_not_in_list", "details": f"{x}: '{val}' not in {input_type}"})

    if validate_function_inputs or validate_has_kwargs:
        given = {x: (None if _is_link(v) else v) for x, v in inputs.items() if x in valid_inputs}
        input_filtered = {x: v for x, v in given.items() if x in validate_function_inputs or validate_has_kwargs}
        ret = validate_function(**input_filtered)
        if ret is not True:
            for x in input_filtered:
                errors.append({"type": "custom_validation_failed", "details": x if ret is False else f"{x} - {ret}"})

    ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
    validated[unique_id] = ret
    return ret


def validate_prompt(prompt):
    """(valid, {node id: errors}) for a prompt; a node that fails and the nodes that need it are listed."""
    for node_id, node in prompt.items():
        if node.get("class_type") not in nodes.NODE_CLASS_MAPPINGS:
            return False, {node_id: [{"type": "invalid_prompt", "details": f"Cannot execute because node {node.get('class_type')} does not exist."}]}
    outputs = [node_id for node_id, node in prompt.items() if getattr(nodes.NODE_CLASS_MAPPINGS[node["class_type"]], "OUTPUT_NODE", False)]
    if not outputs:
        return False, {"": [{"type": "prompt_no_outputs"}]}
    validated = {}
    for node_id in outputs:
        validate_inputs(prompt, node_id, validated)
    node_errors = {node_id: errors for node_id, (ok, errors, _) in validated.items() if not ok}
    return not node_errors, node_errors
