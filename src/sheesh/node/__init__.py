"""Host tier: the node agent that owns VMs on one host (disks, processes, guest channel)."""
