// Stand-in of the WebUI's javascript/inputAccordion.js: AUTOMATIC1111 stable-diffusion-webui
// v1.10.1 (commit 82a973c04367123ae98bd9abdf80d9eda9b910e2); Forge dfdcbab has the same file.
// Written for the ASAG UI test from a reading of that file. For every element of class
// input-accordion, once the UI is loaded:
// - a visible checkbox (id <accordion id>-visible-checkbox, classes of the hidden gradio
//   checkbox <id>-checkbox plus input-accordion-checkbox) goes first into the header's span;
// - while "linked", opening or closing the accordion (its .label-wrap gains or loses the class
//   "open") sets that checkbox, and ticking the checkbox opens or closes the accordion;
// - clicking the checkbox itself unlinks the two (enabled but closed is allowed);
// - every change is copied into the hidden gradio checkbox and announced with updateInput, so
//   the value the Script receives follows; the accordion gets input-accordion-open while open;
// - an <id>-extra column, if any, moves into the header;
// - inputAccordionChecked(id, checked) is what the hidden checkbox's change event calls
//   (infotext paste), and drives the visible one.

function inputAccordionChecked(id, checked) {
    var accordion = gradioApp().getElementById(id);
    accordion.visibleCheckbox.checked = checked;
    accordion.onVisibleCheckboxChange();
}

function setupAccordion(accordion) {
    var labelWrap = accordion.querySelector(".label-wrap");
    var gradioCheckbox = gradioApp().querySelector("#" + accordion.id + "-checkbox input");
    var extra = gradioApp().querySelector("#" + accordion.id + "-extra");
    var headerSpan = labelWrap.querySelector("span");
    var linked = true;

    function isOpen() {
        return labelWrap.classList.contains("open");
    }

    new MutationObserver(function() {
        accordion.classList.toggle("input-accordion-open", isOpen());
        if (linked) {
            accordion.visibleCheckbox.checked = isOpen();
            accordion.onVisibleCheckboxChange();
        }
    }).observe(labelWrap, {attributes: true, attributeFilter: ["class"]});

    if (extra) {
        labelWrap.insertBefore(extra, labelWrap.lastElementChild);
    }

    accordion.onChecked = function(checked) {
        if (isOpen() !== checked) {
            labelWrap.click();
        }
    };

    var visibleCheckbox = document.createElement("INPUT");
    visibleCheckbox.type = "checkbox";
    visibleCheckbox.checked = isOpen();
    visibleCheckbox.id = accordion.id + "-visible-checkbox";
    visibleCheckbox.className = gradioCheckbox.className + " input-accordion-checkbox";
    headerSpan.insertBefore(visibleCheckbox, headerSpan.firstChild);

    accordion.visibleCheckbox = visibleCheckbox;
    accordion.onVisibleCheckboxChange = function() {
        if (linked && isOpen() !== visibleCheckbox.checked) {
            labelWrap.click();
        }
        gradioCheckbox.checked = visibleCheckbox.checked;
        updateInput(gradioCheckbox);
    };

    visibleCheckbox.addEventListener("click", function(event) {
        linked = false;
        event.stopPropagation();
    });
    visibleCheckbox.addEventListener("input", accordion.onVisibleCheckboxChange);
}

onUiLoaded(function() {
    gradioApp().querySelectorAll(".input-accordion").forEach(setupAccordion);
});
