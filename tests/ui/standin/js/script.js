// Stand-in of the WebUI's script.js: AUTOMATIC1111 stable-diffusion-webui v1.10.1
// (commit 82a973c04367123ae98bd9abdf80d9eda9b910e2), plus updateInput from its javascript/ui.js.
// Written for the ASAG UI test from a reading of those files; it keeps only what extension
// scripts rely on, with the same names and timing:
// - gradioApp(): the <gradio-app> element (its shadow root if it has one), or the document;
// - onUiUpdate(cb): cb(mutationRecords) for every batch of DOM mutations under gradioApp();
// - onAfterUiUpdate(cb): cb() once mutations have settled for 200 ms;
// - onUiLoaded(cb): cb() once, on the first mutation batch after an element with the id
//   txt2img_prompt exists (the WebUI's signal that the page is built);
// - a callback that throws is reported with console.error and does not stop the others;
// - updateInput(el): dispatch a bubbling "input" event whose target is el, so gradio reads it.

function gradioApp() {
    var app = document.getElementsByTagName("gradio-app")[0];
    if (!app) {
        return document;
    }
    app.getElementById = function(id) {
        return document.getElementById(id);
    };
    return app.shadowRoot || app;
}

var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiAfterUpdateTimeout = null;
var executedOnLoaded = false;

function onUiUpdate(callback) {
    uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    uiAfterUpdateCallbacks.push(callback);
}

function onUiLoaded(callback) {
    uiLoadedCallbacks.push(callback);
}

function executeCallbacks(queue, arg) {
    queue.forEach(function(callback) {
        try {
            callback(arg);
        } catch (e) {
            console.error("error running callback", callback, ":", e);
        }
    });
}

function updateInput(target) {
    var event = new Event("input", {bubbles: true});
    Object.defineProperty(event, "target", {value: target});
    target.dispatchEvent(event);
}

document.addEventListener("DOMContentLoaded", function() {
    new MutationObserver(function(mutations) {
        if (!executedOnLoaded && gradioApp().querySelector("#txt2img_prompt")) {
            executedOnLoaded = true;
            executeCallbacks(uiLoadedCallbacks);
        }
        executeCallbacks(uiUpdateCallbacks, mutations);
        clearTimeout(uiAfterUpdateTimeout);
        uiAfterUpdateTimeout = setTimeout(function() {
            executeCallbacks(uiAfterUpdateCallbacks);
        }, 200);
    }).observe(gradioApp(), {childList: true, subtree: true});
});
