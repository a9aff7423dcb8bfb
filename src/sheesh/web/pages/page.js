// The node's WebSocket URL for this console page: ?token=<agent token>[&node=<host:port>].
// The node address defaults to the one the control plane advertises (nodeHost/nodePort of the VM).
function sheeshNodeUrl(endpoint) {
  const q = new URLSearchParams(location.search);
  const token = q.get("token") || "";
  const fallback = (SHEESH_NODE_HOST || location.hostname) + ":" + SHEESH_NODE_PORT;
  const node = q.get("node") || fallback;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return {token, url: `${scheme}://${node}/${endpoint}?token=${encodeURIComponent(token)}`};
}
