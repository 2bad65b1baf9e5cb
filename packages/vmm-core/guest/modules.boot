# Loaded by /init at boot with busybox modprobe (modules.dep gives the dependency order).
# virtio PCI transport (pulls virtio_ring, virtio, virtio_pci_modern_dev, virtio_pci_legacy_dev)
virtio_pci
virtio_blk
# virtio_net pulls failover and net_failover
virtio_net
# NoCloud seed: vfat (+ fat) with its code pages, iso9660 (+ cdrom)
vfat
nls_cp437
nls_ascii
nls_iso8859_1
isofs
# ACPI power button -> input event device read by busybox acpid
button
evdev
