// The country selector: chips, the searchable list, the URL.
import { $, MAX_CHIPS, countryName, state, writeUrl } from "./state.js";
import { pollMetrics } from "./polling.js";
import { reopenStream } from "./stream.js";
import { renderMetrics } from "./charts.js";
import { loadDistribution } from "./explorer.js";

export function optionMatches(country, text) {
  const needle = text.trim().toLowerCase();
  return !needle || country.code.toLowerCase().includes(needle) || country.name.toLowerCase().includes(needle);
}

export function setSelection(codes) {
  state.selected = codes;
  state.apiError = null;
  writeUrl();
  renderSelector();
  if (state.metrics) renderMetrics(); // immediate feedback with what we have; the next poll fetches the rest
  if (state.variable) loadDistribution(state.variable);
  reopenStream();
  pollMetrics().catch(() => {
    state.failingSince = state.failingSince || Date.now();
  });
}

export function toggleCountry(code) {
  const selected = state.selected.includes(code) ? state.selected.filter((c) => c !== code) : [...state.selected, code];
  setSelection(selected);
}

export function chip(label, { remove, className = "", buttonLabel, buttonText = "×" } = {}) {
  const li = document.createElement("li");
  li.className = `chip ${className}`;
  const span = document.createElement("span");
  span.textContent = label;
  li.append(span);
  if (remove) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = buttonText;
    button.setAttribute("aria-label", buttonLabel);
    button.addEventListener("click", remove);
    li.append(button);
  }
  return li;
}

export function renderSelector() {
  const chips = $("country-chips");
  const items = [];
  if (!state.selected.length) items.push(chip("All countries with data", { className: "all" }));
  const visible = state.showAllChips ? state.selected : state.selected.slice(0, MAX_CHIPS);
  for (const code of visible) {
    items.push(
      chip(countryName(code), { remove: () => toggleCountry(code), buttonLabel: `Remove ${countryName(code)}` }),
    );
  }
  if (state.selected.length > visible.length) {
    const more = chip("", {
      className: "more",
      buttonText: `+${state.selected.length - visible.length}`,
      buttonLabel: `Show all ${state.selected.length} selected countries`,
      remove: () => {
        state.showAllChips = true;
        renderSelector();
      },
    });
    more.firstChild.remove();
    items.push(more);
  }
  chips.replaceChildren(...items);
  $("country-clear").hidden = !state.selected.length;
  if (!$("country-options").hidden) renderOptions();
}

export let activeOption = -1;

export function renderOptions() {
  const list = $("country-options");
  const input = $("country-search");
  const matches = state.countries
    .filter((c) => optionMatches({ code: c.code, name: countryName(c.code) }, input.value))
    .sort((a, b) => countryName(a.code).localeCompare(countryName(b.code)));
  activeOption = Math.min(activeOption, matches.length - 1);
  const items = matches.map((country, index) => {
    const li = document.createElement("li");
    li.id = `country-option-${country.code}`;
    li.setAttribute("role", "option");
    li.dataset.code = country.code;
    li.setAttribute("aria-selected", String(state.selected.includes(country.code)));
    if (index === activeOption) li.classList.add("active");
    const name = document.createElement("span");
    name.textContent = countryName(country.code);
    const code = document.createElement("span");
    code.className = "code";
    code.textContent = country.code;
    li.append(name, code);
    li.addEventListener("mousedown", (event) => {
      event.preventDefault();
      toggleCountry(country.code);
    });
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No country matches";
    items.push(li);
  }
  list.replaceChildren(...items);
  const active = list.querySelector("li.active");
  input.setAttribute("aria-activedescendant", active ? active.id : "");
  if (active) active.scrollIntoView({ block: "nearest" });
}

export function openOptions(open) {
  $("country-options").hidden = !open;
  $("country-search").setAttribute("aria-expanded", String(open));
  if (open) renderOptions();
}

export function setUpSelector() {
  const input = $("country-search");
  input.addEventListener("focus", () => openOptions(true));
  input.addEventListener("blur", () => openOptions(false));
  input.addEventListener("input", () => {
    activeOption = 0;
    openOptions(true);
  });
  input.addEventListener("keydown", (event) => {
    const options = [...$("country-options").querySelectorAll("li[role=option]")];
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      if ($("country-options").hidden) openOptions(true);
      const step = event.key === "ArrowDown" ? 1 : -1;
      activeOption = Math.max(0, Math.min(options.length - 1, activeOption + step));
      renderOptions();
    } else if (event.key === "Enter") {
      event.preventDefault();
      const option = options[Math.max(0, activeOption)];
      if (option) {
        toggleCountry(option.dataset.code);
        input.value = "";
        activeOption = -1;
        renderOptions();
      }
    } else if (event.key === "Escape") {
      openOptions(false);
    } else if (event.key === "Backspace" && input.value === "" && state.selected.length) {
      setSelection(state.selected.slice(0, -1));
    }
  });
  $("country-clear").addEventListener("click", () => setSelection([]));
  for (const radio of document.querySelectorAll("input[name=domain]")) {
    radio.checked = radio.value === state.domain;
    radio.addEventListener("change", () => {
      state.domain = radio.value;
      writeUrl();
      renderMetrics();
    });
  }
  const sort = $("sort-order");
  sort.value = state.sort;
  sort.addEventListener("change", () => {
    state.sort = sort.value;
    writeUrl();
    renderMetrics();
  });
}
