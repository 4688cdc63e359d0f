// Show/hide buttons for write-only secret inputs: reveals only what is being typed now, since
// the stored value is never sent to the browser.
"use strict";
{
    function addToggle(input) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "button secret-toggle";
        button.textContent = "Show";
        button.style.marginLeft = "0.5em";
        button.setAttribute("aria-controls", input.id);
        button.setAttribute("aria-pressed", "false");
        button.addEventListener("click", () => {
            const reveal = input.type === "password";
            input.type = reveal ? "text" : "password";
            button.textContent = reveal ? "Hide" : "Show";
            button.setAttribute("aria-pressed", String(reveal));
        });
        input.after(button);
    }

    function hideAll(form) {
        // Submitted as a password field, so browsers treat and store it as one.
        form.querySelectorAll("input[data-secret-toggle]").forEach((input) => {
            input.type = "password";
        });
    }

    document.addEventListener("DOMContentLoaded", () => {
        document.querySelectorAll("input[data-secret-toggle]").forEach(addToggle);
        document.querySelectorAll("form").forEach((form) => {
            form.addEventListener("submit", () => hideAll(form));
        });
    });
}
