"""Browser consoles served by the control plane: xterm.js for /serial, noVNC for /vnc."""
