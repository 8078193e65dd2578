"""Guest software that runs inside real operating systems next to the simulated devices.

``guest/linux/`` holds the Linux guest: ``ivshmem-echo.c`` (the echo protocol
through QEMU's ``ivshmem-doorbell`` on VFIO, MSI-X as eventfds) and the
initramfs's ``init``. :mod:`ivhw.guest.initramfs` builds the initramfs at build
time (``python -m ivhw.guest.initramfs``); :mod:`ivhw.guest.vm` boots it in
QEMU as a peer of an ivshmem server.
"""
