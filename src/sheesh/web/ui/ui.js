// htmx settings of the sheesh UI: error responses (4xx/5xx) are swapped in like any other (they carry an error
// fragment), and every request sends the page's CSRF token.
htmx.config.responseHandling = [
  {code: "204", swap: false},
  {code: "[23]..", swap: true},
  {code: "[45]..", swap: true, error: false},
];
document.addEventListener("htmx:configRequest", (e) => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta) e.detail.headers["X-CSRF-Token"] = meta.content;
});
// upload progress bars: <progress data-for="form id">
document.addEventListener("htmx:xhr:progress", (e) => {
  const bar = document.querySelector(`progress[data-for="${e.target.id}"]`);
  if (bar && e.detail.lengthComputable) bar.value = (e.detail.loaded / e.detail.total) * 100;
});
