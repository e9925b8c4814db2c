// Stand-in of the WebUI's javascript/hints.js: AUTOMATIC1111 stable-diffusion-webui v1.10.1
// (commit 82a973c04367123ae98bd9abdf80d9eda9b910e2); Forge dfdcbab applies hints the same way.
// Written for the ASAG UI test from a reading of that file. The behaviour kept:
// - a global `titles` object, text -> hint (the host's own entries are left out here; extensions
//   add theirs to it from their own javascript/*.js, loaded after this file);
// - on every UI update, the added elements that are not hidden (no class "hide") are collected:
//   the element itself if it is a SPAN, BUTTON, P or INPUT (or a dropdown item) without a title,
//   and every span, button and p inside it;
// - 1 s after the last update (debounced), each collected element without a title gets
//   titles[text] where text is its exact textContent, else titles[value], titles[data-value],
//   or titles[one of its classes]; the `localization` table translates the hint if it can;
// - onUiLoaded: components whose config carries webui_tooltip get it as title (the WebUI's
//   `tooltip=` keyword; the ASAG UI does not use it).

var titles = {};

function hintFor(key) {
    if (!key || !Object.prototype.hasOwnProperty.call(titles, key)) {
        return undefined;
    }
    var hint = titles[key];
    return (typeof localization === "object" && localization[hint]) || hint;
}

function updateTooltip(element) {
    if (element.title) {
        return;
    }
    var tooltip = hintFor(element.textContent) || hintFor(element.value) || hintFor(element.dataset.value);
    for (var i = 0; !tooltip && i < element.classList.length; i++) {
        tooltip = hintFor(element.classList[i]);
    }
    if (tooltip) {
        element.title = tooltip;
    }
}

var tooltipCheckNodes = new Set();
var tooltipCheckTimer = null;

onUiUpdate(function(mutationRecords) {
    mutationRecords.forEach(function(record) {
        if (record.type === "childList" && record.target.classList.contains("options")) {
            var input = record.target.parentNode && record.target.parentNode.querySelector("input");
            if (input) {
                input.title = "";
                tooltipCheckNodes.add(input);
            }
        }
        record.addedNodes.forEach(function(node) {
            if (node.nodeType !== Node.ELEMENT_NODE || node.classList.contains("hide")) {
                return;
            }
            var tag = node.tagName;
            if (!node.title && (tag === "SPAN" || tag === "BUTTON" || tag === "P" || tag === "INPUT" ||
                    (tag === "LI" && node.classList.contains("item")))) {
                tooltipCheckNodes.add(node);
            }
            node.querySelectorAll("span, button, p").forEach(function(inner) {
                tooltipCheckNodes.add(inner);
            });
        });
    });
    if (tooltipCheckNodes.size) {
        clearTimeout(tooltipCheckTimer);
        tooltipCheckTimer = setTimeout(function() {
            tooltipCheckNodes.forEach(updateTooltip);
            tooltipCheckNodes.clear();
        }, 1000);
    }
});

onUiLoaded(function() {
    (window.gradio_config.components || []).forEach(function(comp) {
        if (comp.props.webui_tooltip && comp.props.elem_id) {
            var elem = gradioApp().getElementById(comp.props.elem_id);
            if (elem) {
                elem.title = comp.props.webui_tooltip;
            }
        }
    });
});
