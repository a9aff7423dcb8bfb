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
// PUT a chosen file to a REST upload route (images), with the CSRF token, showing its progress
function sheeshPut(input, url) {
  const file = input.files[0];
  if (!file) return;
  const bar = document.getElementById(input.id + "-progress");
  const status = document.getElementById(input.id + "-status");
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", url);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.setRequestHeader("X-CSRF-Token", document.querySelector('meta[name="csrf-token"]').content);
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (e.loaded / e.total) * 100; };
  xhr.onload = () => {
    let message = xhr.status < 300 ? "uploaded" : `failed (${xhr.status})`;
    try { message += xhr.status < 300 ? "" : ": " + JSON.parse(xhr.responseText).message; } catch (_) {}
    status.textContent = message;
  };
  xhr.onerror = () => { status.textContent = "failed: network error"; };
  status.textContent = "uploading…";
  xhr.send(file);
}
