// Stand-in of Forge Classic's javascript/hints.js (Haoming02/sd-webui-forge-classic 5136ce20, read
// in the fork fajarnnn/sd-webui-reforge-classic). Written for the ASAG UI test from a reading of
// that file. What differs from the WebUI's, and is kept:
// - `titles` is a `const` global (script scope): extensions can add keys but not redeclare it;
// - on every UI update, added elements that are not hidden are collected: the element itself if it
//   is a SPAN, BUTTON or P without a title (no INPUT, no dropdown items), and every span, button
//   and p inside it;
// - 1 s after the last update (debounced), each collected element without a title gets
//   localization[titles[text]] || titles[text], text being its textContent or else its value, and
//   the first input inside its parent gets the same title;
// - onUiLoaded: components whose config carries webui_tooltip get it as title.

const titles = {};

function updateTooltip(element) {
    if (element.title) return;
    const text = element.textContent || element.value;
    const tooltip = localization[titles[text]] || titles[text];
    if (!tooltip) return;
    element.title = tooltip;
    const field = element.parentNode.querySelector("input");
    if (field != null) field.title = tooltip;
}

const tooltipCheckNodes = new Set();
let tooltipCheckTimer = null;

onUiUpdate(function (mutationRecords) {
    for (const record of mutationRecords) {
        for (const node of record.addedNodes) {
            if (node.nodeType !== Node.ELEMENT_NODE || node.classList.contains("hide")) continue;
            if (!node.title && ["SPAN", "BUTTON", "P"].includes(node.tagName)) tooltipCheckNodes.add(node);
            node.querySelectorAll("span, button, p").forEach((inner) => tooltipCheckNodes.add(inner));
        }
    }
    if (tooltipCheckNodes.size) {
        clearTimeout(tooltipCheckTimer);
        tooltipCheckTimer = setTimeout(() => {
            tooltipCheckNodes.forEach(updateTooltip);
            tooltipCheckNodes.clear();
        }, 1000);
    }
});

onUiLoaded(() => {
    for (const comp of window.gradio_config.components) {
        if (comp.props.webui_tooltip && comp.props.elem_id) {
            const elem = gradioApp().getElementById(comp.props.elem_id);
            if (elem) elem.title = comp.props.webui_tooltip;
        }
    }
});
