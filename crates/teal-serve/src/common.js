"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

// Fetches dashboard.json every `every` ms and hands it to `render`; the
// header says when the page last got data, or why it did not.
function poll(every, render, failing) {
  const conn = $("conn");
  const tick = async () => {
    try {
      const r = await fetch("dashboard.json", {cache: "no-store"});
      if (!r.ok) throw new Error(await r.text());
      render(await r.json());
      conn.textContent = "updated " + new Date().toLocaleTimeString(); conn.className = "conn";
    } catch (e) {
      conn.textContent = failing + ": " + e.message; conn.className = "conn error";
    }
    setTimeout(tick, every);
  };
  tick();
}
