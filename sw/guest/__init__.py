"""Guest software that runs inside real operating systems next to the simulated devices.

``sw/guest/linux/`` holds the Linux guest: ``ivshmem-echo.c`` (the echo protocol
through QEMU's ``ivshmem-doorbell`` on VFIO, MSI-X as eventfds) and the
initramfs's ``init``. :mod:`ivhw.sw.guest.initramfs` builds the initramfs at build
time (``python -m ivhw.sw.guest.initramfs``); :mod:`ivhw.sw.guest.vm` boots it in
QEMU as a peer of an ivshmem server.
"""
