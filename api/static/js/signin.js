// Sign in with an API key. The key is checked against the server before it is
// kept, so a typo shows the server's own message instead of an empty list.

import { checkKey, setKey } from "./api.js";
import { clear, h } from "./dom.js";

export function signInView(main, { message = "", notice = "", onSignedIn }) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "kg_…",
    "aria-describedby": "signin-error signin-help",
  });
  const error = h("p", { id: "signin-error", class: "field-error", role: "alert" }, message);
  const info = h("p", { class: "notice", role: "status", hidden: !notice }, notice);
  const button = h("button", { type: "submit", class: "button primary" }, "Sign in");

  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "enter an API key";
      return;
    }
    button.disabled = true;
    error.textContent = "";
    try {
      await checkKey(key);
      setKey(key);
      onSignedIn();
    } catch (failure) {
      error.textContent = failure.message;
      input.focus();
    } finally {
      button.disabled = false;
    }
  }

  clear(
    main,
    h(
      "section",
      { class: "card signin" },
      h("h1", {}, "Sign in"),
      info,
      h(
        "form",
        { id: "signin-form", onsubmit: submit, novalidate: true },
        h("label", { for: "api-key" }, "API key"),
        input,
        error,
        h(
          "p",
          { id: "signin-help", class: "help" },
          h("code", {}, "kegnet serve"),
          " prints its key when it starts and saves it in ",
          h("code", {}, "$KEGNET_HOME/api_key"),
          "; ",
          h("code", {}, "kegnet keys create"),
          " makes one for a shared server. The key stays in this tab and is forgotten when the tab closes.",
        ),
        h("div", { class: "actions" }, button),
      ),
    ),
  );
  input.focus();
  return { stop() {} };
}
