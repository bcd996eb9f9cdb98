// The chat page of `gpt2kit serve`: it speaks the server's OpenAI-compatible endpoints, as any client does.
// Model text is only ever set with textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const chat = document.body.dataset.mode === "chat";  // a base model gets a completion box instead
  const keyRequired = document.body.dataset.key === "required";
  const KEY_STORE = "gpt2kit-api-key";
  const log = $("log"), input = $("input"), status = $("status");
  let key = sessionStorage.getItem(KEY_STORE) || "";
  let messages = [];  // the conversation, sent whole with every chat request
  let inFlight = null;  // the AbortController of the request being answered

  function headers() {
    const h = {"Content-Type": "application/json"};
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function showStatus(text) {
    status.textContent = text;
    status.hidden = !text;
  }

  function askKey(message) {
    if (message) $("key-message").textContent = message;
    $("key-form").hidden = false;
    $("key").focus();
  }

  function refused() {
    key = "";
    sessionStorage.removeItem(KEY_STORE);
    askKey("The server refused the API key (401): enter the key given to `gpt2kit serve --api-key`.");
    showStatus("Not authorized: the API key is missing or wrong.");
  }

  async function errorText(resp) {
    try {
      return (await resp.json()).error.message;
    } catch {
      return `${resp.status} ${resp.statusText}`;
    }
  }

  async function loadModel() {
    let resp;
    try {
      resp = await fetch("/v1/models", {headers: headers()});
    } catch (e) {
      return showStatus("The server cannot be reached: " + e.message);
    }
    if (resp.status === 401) return refused();
    if (!resp.ok) return showStatus(await errorText(resp));
    $("key-form").hidden = true;
    showStatus("");
    const model = (await resp.json()).data[0];
    $("model").textContent = model.id + (chat ? "" : " (base model: completion)");
    // a reply longer than half the model's context leaves too little room for the conversation (the default 128
    // does not fit a 128-token model at all)
    const box = $("max-tokens");
    if (model.max_model_len) {
      box.max = model.max_model_len - 1;
      box.value = Math.min(Number(box.value), Math.max(1, Math.floor(model.max_model_len / 2)));
    }
  }

  // the JSON objects of a server-sent event stream, up to "data: [DONE]"
  async function* events(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  }

  function entry(cls, text) {
    const div = document.createElement("div");
    div.className = "msg " + cls;
    div.textContent = text;
    log.append(div);
    return div;
  }

  function numberField(id) {
    const v = $(id).value.trim();
    return v === "" || Number.isNaN(Number(v)) ? undefined : Number(v);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function send() {
    const text = input.value;
    if (!text.trim() || inFlight) return;
    if (keyRequired && !key) return askKey();
    showStatus("");
    const body = {stream: true, max_tokens: numberField("max-tokens"), temperature: numberField("temperature"),
                  top_k: numberField("top-k")};
    let shown, out;
    if (chat) {
      messages.push({role: "user", content: text});
      body.messages = messages;
      shown = entry("user", text);
      out = entry("assistant", "");
    } else {
      body.prompt = text;
      shown = entry("completion", text);
      out = document.createElement("span");
      out.className = "generated";
      shown.append(out);
    }
    input.value = "";
    const controller = new AbortController();
    inFlight = controller;
    setBusy(true);
    let reply = "";
    try {
      const resp = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
                               {method: "POST", headers: headers(), body: JSON.stringify(body),
                                signal: controller.signal});
      if (resp.status === 401) {
        refused();
      } else if (!resp.ok) {
        showStatus(await errorText(resp));
      } else {
        for await (const chunk of events(resp)) {
          if (chunk.error) {
            showStatus(chunk.error.message);
            break;
          }
          const choice = chunk.choices[0];
          if (!choice) continue;
          reply += (chat ? choice.delta.content : choice.text) || "";
          out.textContent = reply;
          log.scrollTop = log.scrollHeight;
        }
      }
    } catch (e) {
      if (e.name === "AbortError") {
        out.classList.add("stopped");
      } else {
        showStatus("The request failed: " + e.message);
      }
    } finally {
      inFlight = null;
      setBusy(false);
      if (chat) {
        if (reply) {
          messages.push({role: "assistant", content: reply});
        } else {  // nothing came back: the turn is not part of the conversation
          messages.pop();
          shown.classList.add("failed");
          out.remove();
          input.value = input.value || text;
        }
      }
      input.focus();
    }
  }

  function newChat() {
    if (inFlight) inFlight.abort();
    messages = [];
    log.replaceChildren();
    showStatus("");
    input.focus();
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => inFlight && inFlight.abort());
  $("new").addEventListener("click", newChat);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    key = $("key").value.trim();
    $("key").value = "";
    if (key) sessionStorage.setItem(KEY_STORE, key);
    loadModel();
  });

  if (!chat) {
    $("new").textContent = "Clear";
    input.placeholder = "Text to continue (Enter sends, Shift+Enter is a new line)";
  }
  if (keyRequired && !key) {
    askKey();
  } else {
    loadModel();
  }
  input.focus();
})();
