/*
 * ivshmem-echo: the echo protocol (docs/echo-protocol.md) from a Linux guest,
 * through QEMU's ivshmem-doorbell PCI device, as an unprivileged-driver-style
 * user program on VFIO.
 *
 * It finds the device on the PCI bus through sysfs (vendor 1af4, device 1110),
 * hands it to vfio-pci, maps BAR0 (registers) and BAR2 (shared memory) through
 * the VFIO device, reads IVPosition, and takes the device's MSI-X vectors as
 * eventfds (VFIO_DEVICE_SET_IRQS): every wait is a poll() on those eventfds,
 * never a loop over shared memory. It can be an echo requester (--target), an
 * echo responder (--serve), or both at once. Everything it prints goes to
 * stdout, which the initramfs's init connects to the serial console; round
 * trips are measured with the guest's CLOCK_MONOTONIC.
 *
 * VFIO needs an IOMMU: give QEMU `-device intel-iommu,intremap=on` and the
 * kernel `intel_iommu=on`. Register offsets and the echo layout come from
 * ivhw_layout.h, which the build generates from the project's one register map.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ivhw_layout.h"

#define PROG "ivshmem-echo"
#define MAX_VECTORS 64
#define MAX_PAYLOADS 32
#define MAX_TARGETS 8
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4

struct device {
	char bdf[256];
	int container, group, fd;
	volatile uint32_t *regs; /* NULL: BAR0 through pread/pwrite at regs_offset */
	size_t regs_size;
	off_t regs_offset;
	volatile uint8_t *shm;
	size_t shm_size;
	unsigned vectors;
	int irq[MAX_VECTORS];
	uint32_t id;
};

struct options {
	const char *bdf;
	long targets[MAX_TARGETS];
	int ntargets;         /* 0: no requests */
	long count;
	long size;
	const char *payloads[MAX_PAYLOADS];
	int npayloads;
	double timeout;
	int serve;
	int bar0_rw;          /* BAR0 through read/write even where it could be mapped */
	double serve_for;     /* < 0: until serve_count or forever */
	long serve_count;     /* < 0: no limit */
};

static void vsay(const char *prefix, const char *fmt, va_list ap)
{
	fputs(prefix, stdout);
	vprintf(fmt, ap);
	fputc('\n', stdout);
	fflush(stdout);
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(PROG ": ", fmt, ap);
	va_end(ap);
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(PROG ": error: ", fmt, ap);
	va_end(ap);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int read_sysfs(const char *dir, const char *name, char *buf, size_t len)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static void write_sysfs(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		die("cannot open %s: %s", path, strerror(errno));
	if (write(fd, value, strlen(value)) < 0 && errno != EBUSY && errno != ENODEV)
		die("cannot write %s to %s: %s", value, path, strerror(errno));
	close(fd);
}

/* Whether the device at `dir` has a BAR1 (ivshmem-doorbell's MSI-X BAR; ivshmem-plain has none). */
static int has_bar1(const char *dir)
{
	char path[PATH_MAX + 16];
	unsigned long long start = 0, end = 0, flags;
	snprintf(path, sizeof path, "%s/resource", dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	for (int bar = 0; bar <= 1; bar++)
		if (fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3)
			start = end = 0;
	fclose(f);
	return end > start;
}

/* The first ivshmem-doorbell (1af4:1110 with an MSI-X BAR1) on the PCI bus, or `want`. */
static void find_device(struct device *dev, const char *want)
{
	const char *base = "/sys/bus/pci/devices";
	DIR *dir = opendir(base);
	struct dirent *ent;
	if (!dir)
		die("cannot list %s: %s (is sysfs mounted?)", base, strerror(errno));
	dev->bdf[0] = 0;
	while ((ent = readdir(dir))) {
		char path[PATH_MAX], vendor[16], device[16];
		if (ent->d_name[0] == '.')
			continue;
		if (want && strcmp(ent->d_name, want))
			continue;
		snprintf(path, sizeof path, "%s/%s", base, ent->d_name);
		if (read_sysfs(path, "vendor", vendor, sizeof vendor) ||
		    read_sysfs(path, "device", device, sizeof device))
			continue;
		if (strcmp(vendor, "0x1af4") || strcmp(device, "0x1110"))
			continue;
		if (!want && !has_bar1(path))
			continue; /* ivshmem-plain: no interrupts, not ours */
		snprintf(dev->bdf, sizeof dev->bdf, "%s", ent->d_name);
		break;
	}
	closedir(dir);
	if (!dev->bdf[0]) {
		if (want)
			die("%s is not an ivshmem device (1af4:1110)", want);
		die("no ivshmem-doorbell device (1af4:1110 with an MSI-X BAR) on the PCI bus");
	}
}

/* Unbind whatever driver has the device and give it to vfio-pci. */
static void bind_vfio(const struct device *dev)
{
	char path[PATH_MAX], link[PATH_MAX];
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver", dev->bdf);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n > 0) {
		link[n] = 0;
		if (strstr(link, "/vfio-pci"))
			return;
		snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver/unbind", dev->bdf);
		write_sysfs(path, dev->bdf);
	}
	if (access("/sys/bus/pci/drivers/vfio-pci", F_OK))
		die("vfio-pci is not loaded (modprobe vfio-pci)");
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver_override", dev->bdf);
	write_sysfs(path, "vfio-pci");
	write_sysfs("/sys/bus/pci/drivers_probe", dev->bdf);
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver", dev->bdf);
	n = readlink(path, link, sizeof link - 1);
	if (n <= 0 || (link[n] = 0, !strstr(link, "/vfio-pci")))
		die("vfio-pci did not take %s (no IOMMU? boot with intel_iommu=on and give QEMU "
		    "-device intel-iommu,intremap=on)", dev->bdf);
}

/*
 * mmap a BAR through VFIO. vfio-pci refuses to map a BAR smaller than a page that
 * does not start on a page boundary; with `fallback` that returns NULL (and the
 * region's file offset) so that the caller uses pread/pwrite instead.
 */
static volatile void *map_region(struct device *dev, unsigned index, size_t *size,
				 off_t *offset, int fallback)
{
	struct vfio_region_info info = { .argsz = sizeof info, .index = index };
	if (ioctl(dev->fd, VFIO_DEVICE_GET_REGION_INFO, &info))
		die("VFIO_DEVICE_GET_REGION_INFO(BAR%u): %s", index, strerror(errno));
	if (!info.size)
		die("BAR%u is not implemented", index);
	*size = info.size;
	if (offset)
		*offset = info.offset;
	if (!(info.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
		if (fallback)
			return NULL;
		die("vfio-pci cannot mmap BAR%u (%llu bytes)", index, (unsigned long long)info.size);
	}
	long page = sysconf(_SC_PAGESIZE);
	size_t length = (info.size + page - 1) & ~(size_t)(page - 1);
	void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, dev->fd, info.offset);
	if (p == MAP_FAILED)
		die("mmap BAR%u: %s", index, strerror(errno));
	return p;
}

static uint32_t reg_read(const struct device *dev, unsigned off)
{
	uint32_t value;
	if (dev->regs)
		return dev->regs[off / 4];
	if (pread(dev->fd, &value, 4, dev->regs_offset + off) != 4)
		die("reading BAR0 at %#x: %s", off, strerror(errno));
	return value;
}

static void reg_write(const struct device *dev, unsigned off, uint32_t value)
{
	if (dev->regs)
		dev->regs[off / 4] = value;
	else if (pwrite(dev->fd, &value, 4, dev->regs_offset + off) != 4)
		die("writing BAR0 at %#x: %s", off, strerror(errno));
}

static void config_update(struct device *dev, uint16_t set)
{
	struct vfio_region_info info = { .argsz = sizeof info,
					 .index = VFIO_PCI_CONFIG_REGION_INDEX };
	uint16_t command;
	if (ioctl(dev->fd, VFIO_DEVICE_GET_REGION_INFO, &info))
		die("VFIO_DEVICE_GET_REGION_INFO(config): %s", strerror(errno));
	if (pread(dev->fd, &command, 2, info.offset + PCI_COMMAND) != 2)
		die("reading the command register: %s", strerror(errno));
	command |= set;
	if (pwrite(dev->fd, &command, 2, info.offset + PCI_COMMAND) != 2)
		die("writing the command register: %s", strerror(errno));
}

/* One eventfd per MSI-X vector, signalled by the kernel when the vector fires. */
static void setup_msix(struct device *dev)
{
	struct vfio_irq_info irq = { .argsz = sizeof irq, .index = VFIO_PCI_MSIX_IRQ_INDEX };
	if (ioctl(dev->fd, VFIO_DEVICE_GET_IRQ_INFO, &irq))
		die("VFIO_DEVICE_GET_IRQ_INFO(MSI-X): %s", strerror(errno));
	if (!irq.count)
		die("the device has no MSI-X vectors (ivshmem-plain? use ivshmem-doorbell)");
	dev->vectors = irq.count > MAX_VECTORS ? MAX_VECTORS : irq.count;
	size_t argsz = sizeof(struct vfio_irq_set) + sizeof(int32_t) * dev->vectors;
	struct vfio_irq_set *set = calloc(1, argsz);
	set->argsz = argsz;
	set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	set->index = VFIO_PCI_MSIX_IRQ_INDEX;
	set->start = 0;
	set->count = dev->vectors;
	for (unsigned v = 0; v < dev->vectors; v++) {
		dev->irq[v] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (dev->irq[v] < 0)
			die("eventfd: %s", strerror(errno));
		((int32_t *)set->data)[v] = dev->irq[v];
	}
	if (ioctl(dev->fd, VFIO_DEVICE_SET_IRQS, set))
		die("VFIO_DEVICE_SET_IRQS(MSI-X, %u vectors): %s", dev->vectors, strerror(errno));
	free(set);
}

static void open_device(struct device *dev, const char *want, int bar0_rw)
{
	char path[PATH_MAX], link[PATH_MAX];
	find_device(dev, want);
	bind_vfio(dev);
	snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", dev->bdf);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n <= 0)
		die("%s has no IOMMU group (boot with intel_iommu=on)", dev->bdf);
	link[n] = 0;
	const char *group = strrchr(link, '/') + 1;

	dev->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (dev->container < 0)
		die("open /dev/vfio/vfio: %s", strerror(errno));
	if (ioctl(dev->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		die("unknown VFIO API version");
	snprintf(path, sizeof path, "/dev/vfio/%s", group);
	dev->group = open(path, O_RDWR | O_CLOEXEC);
	if (dev->group < 0)
		die("open %s: %s", path, strerror(errno));
	struct vfio_group_status status = { .argsz = sizeof status };
	if (ioctl(dev->group, VFIO_GROUP_GET_STATUS, &status) ||
	    !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("IOMMU group %s is not viable (other devices in it are not on vfio-pci)", group);
	if (ioctl(dev->group, VFIO_GROUP_SET_CONTAINER, &dev->container))
		die("VFIO_GROUP_SET_CONTAINER: %s", strerror(errno));
	if (ioctl(dev->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) &&
	    ioctl(dev->container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU))
		die("VFIO_SET_IOMMU: %s", strerror(errno));
	dev->fd = ioctl(dev->group, VFIO_GROUP_GET_DEVICE_FD, dev->bdf);
	if (dev->fd < 0)
		die("VFIO_GROUP_GET_DEVICE_FD(%s): %s", dev->bdf, strerror(errno));

	dev->regs = map_region(dev, VFIO_PCI_BAR0_REGION_INDEX, &dev->regs_size,
			       &dev->regs_offset, 1);
	if (bar0_rw && dev->regs) {
		munmap((void *)dev->regs, sysconf(_SC_PAGESIZE));
		dev->regs = NULL;
	}
	dev->shm = map_region(dev, VFIO_PCI_BAR2_REGION_INDEX, &dev->shm_size, NULL, 0);
	/* memory decoding, and bus mastering: without it the device's MSI-X writes are dropped */
	config_update(dev, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	setup_msix(dev);
	dev->id = reg_read(dev, IVSHMEM_IVPOSITION);
	say("device %s (1af4:1110) on vfio-pci, IOMMU group %s", dev->bdf, group);
	say("BAR0 %zu bytes%s, BAR2 %zu bytes of shared memory, %u MSI-X vectors",
	    dev->regs_size, dev->regs ? "" : " (through read/write on the VFIO device)",
	    dev->shm_size, dev->vectors);
	if (dev->id == 0xffffffffu)
		die("IVPosition is FFFFFFFFh: the device has no peer ID (no server?)");
	say("IVPosition %u", dev->id);
}

static uint32_t shm_read32(const struct device *dev, size_t off)
{
	return *(volatile uint32_t *)(dev->shm + off);
}

static void shm_write32(struct device *dev, size_t off, uint32_t value)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	*(volatile uint32_t *)(dev->shm + off) = value;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static void ring(struct device *dev, uint32_t peer, uint32_t vector)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	reg_write(dev, IVSHMEM_DOORBELL,
		  (peer << DOORBELL_PEER_SHIFT) | (vector << DOORBELL_VECTOR_SHIFT));
}

static size_t outbox(uint32_t peer) { return ECHO_OUTBOX_BASE + ECHO_SLOT_SIZE * peer; }
static size_t inbox(uint32_t peer) { return ECHO_INBOX_BASE + ECHO_SLOT_SIZE * peer; }

static void hex(char *out, const uint8_t *data, size_t len)
{
	for (size_t i = 0; i < len; i++)
		sprintf(out + 2 * i, "%02x", data[i]);
	out[2 * len] = 0;
}

static long served;

/* Echo responder: answer every outbox addressed to us, in ascending peer order. */
static long serve_pending(struct device *dev)
{
	long answered = 0;
	for (uint32_t r = 0; r < ECHO_MAX_PEERS && inbox(r) + ECHO_SLOT_SIZE <= dev->shm_size; r++) {
		size_t box = outbox(r), reply = inbox(r);
		if (shm_read32(dev, box) != dev->id)
			continue;
		uint32_t length = shm_read32(dev, box + ECHO_LENGTH);
		if (!length)
			continue;
		if (length > ECHO_MAX_PAYLOAD)
			length = ECHO_MAX_PAYLOAD;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		shm_write32(dev, reply, dev->id);
		for (uint32_t i = 0; i < length; i++)
			dev->shm[reply + ECHO_PAYLOAD + i] = dev->shm[box + ECHO_PAYLOAD + i] ^ 0xff;
		shm_write32(dev, reply + ECHO_LENGTH, length); /* the length goes last */
		shm_write32(dev, box + ECHO_LENGTH, 0);
		ring(dev, r, 0);
		answered++;
		say("served %u bytes from peer %u", length, r);
	}
	served += answered;
	return answered;
}

/*
 * Wait for an interrupt on any vector until `deadline` (CLOCK_MONOTONIC seconds).
 * Returns the bit set of vectors that fired, 0 on timeout.
 */
static uint64_t wait_irq(struct device *dev, double deadline)
{
	struct pollfd fds[MAX_VECTORS];
	for (unsigned v = 0; v < dev->vectors; v++)
		fds[v] = (struct pollfd){ .fd = dev->irq[v], .events = POLLIN };
	for (;;) {
		double left = deadline - now();
		if (left <= 0)
			return 0;
		int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
		int n = poll(fds, dev->vectors, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("poll: %s", strerror(errno));
		if (!n)
			continue;
		uint64_t fired = 0, count;
		for (unsigned v = 0; v < dev->vectors; v++)
			if (fds[v].revents & POLLIN && read(dev->irq[v], &count, 8) == 8)
				fired |= 1ull << v;
		if (fired)
			return fired;
	}
}

/* What the guest kernel counted for our vectors ("vfio-msix[V](BDF)" in /proc/interrupts). */
static void report_interrupts(const struct device *dev)
{
	char line[4096], name[300], text[MAX_VECTORS * 24] = "";
	unsigned long counts[MAX_VECTORS] = { 0 };
	int cpus = 0;
	FILE *f = fopen("/proc/interrupts", "r");
	if (!f || !fgets(line, sizeof line, f)) {
		say("cannot read /proc/interrupts");
		if (f)
			fclose(f);
		return;
	}
	for (char *p = line; (p = strstr(p, "CPU")); p += 3)
		cpus++;
	while (fgets(line, sizeof line, f)) {
		for (unsigned v = 0; v < dev->vectors; v++) {
			snprintf(name, sizeof name, "vfio-msix[%u](%s)", v, dev->bdf);
			if (!strstr(line, name))
				continue;
			char *p = strchr(line, ':');
			for (int c = 0; p && c < cpus; c++)
				counts[v] += strtoul(p + 1, &p, 10);
		}
	}
	fclose(f);
	for (unsigned v = 0; v < dev->vectors; v++)
		snprintf(text + strlen(text), sizeof text - strlen(text), "%s vector %u: %lu",
			 v ? "," : "", v, counts[v]);
	say("MSI-X interrupts taken by the guest kernel:%s", text);
}

static int parse_hex(const char *text, uint8_t *out, size_t max)
{
	size_t n = strlen(text);
	if (n % 2 || n / 2 > max || !n)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned byte;
		if (sscanf(text + 2 * i, "%2x", &byte) != 1)
			return -1;
		out[i] = byte;
	}
	return n / 2;
}

/* One request to `target`: 0 when the right reply came, 1 when it was wrong, -1 when none came. */
static int request(struct device *dev, const struct options *opt, uint32_t target, long n,
		   const uint8_t *payload, size_t len)
{
	size_t box = outbox(dev->id), reply = inbox(dev->id);
	uint8_t data[ECHO_MAX_PAYLOAD];
	char text[2 * ECHO_MAX_PAYLOAD + 1];

	shm_write32(dev, reply + ECHO_LENGTH, 0);
	shm_write32(dev, box, target);
	for (size_t i = 0; i < len; i++)
		dev->shm[box + ECHO_PAYLOAD + i] = payload[i];
	hex(text, payload, len);
	say("request %ld -> peer %u: %zu bytes %s", n, target, len, text);
	double start = now(), deadline = start + opt->timeout, rering = start + 1.0;
	shm_write32(dev, box + ECHO_LENGTH, len); /* the length goes last */
	ring(dev, target, 0);
	for (;;) {
		double until = deadline < rering ? deadline : rering;
		uint64_t fired = wait_irq(dev, until);
		double t = now();
		if (!fired) {
			if (t >= deadline) {
				shm_write32(dev, box + ECHO_LENGTH, 0);
				say("error: no reply from peer %u within %g s (is the peer or the "
				    "server gone?)", target, opt->timeout);
				return -1;
			}
			/* a doorbell to a peer that had not joined yet is dropped; the outbox is
			 * the state, so ringing again is harmless */
			say("request %ld: no reply after %.0f s, ringing peer %u again", n, t - start,
			    target);
			ring(dev, target, 0);
			rering = t + 1.0;
			continue;
		}
		if (opt->serve)
			serve_pending(dev);
		/* the doorbell first, then the inbox (protocol step 5) */
		if (!(fired & 1))
			continue;
		uint32_t length = shm_read32(dev, reply + ECHO_LENGTH);
		if (!length)
			continue;
		double rtt = t - start;
		uint32_t source = shm_read32(dev, reply);
		if (length > ECHO_MAX_PAYLOAD)
			length = ECHO_MAX_PAYLOAD;
		for (uint32_t i = 0; i < length; i++)
			data[i] = dev->shm[reply + ECHO_PAYLOAD + i];
		int ok = source == target && length == len;
		for (size_t i = 0; ok && i < len; i++)
			ok = (data[i] ^ payload[i]) == 0xff;
		hex(text, data, length);
		say("reply %ld <- peer %u (MSI-X 0): %u bytes %s %s rtt_us %.1f", n, source, length,
		    text, ok ? "ok" : "WRONG", rtt * 1e6);
		return !ok;
	}
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: " PROG " [--device BDF] [--target ID... [--count N] [--size BYTES]\n"
		"       [--payload HEX]... [--timeout SECONDS]] [--serve [--serve-for SECONDS]\n"
		"       [--serve-count N]] [--bar0-rw]\n"
		"Speaks the ivshmem echo protocol through an ivshmem-doorbell device on VFIO.\n"
		"  --target ID       send echo requests to peer ID (each reply is checked; repeat\n"
		"                    for several peers, one after the other); the first request\n"
		"                    that gets no reply ends the run\n"
		"  --payload HEX     a request payload (1..%d bytes, repeatable)\n"
		"  --count N         without --payload: N generated payloads (default 3)\n"
		"  --size BYTES      size of the generated payloads (default 16)\n"
		"  --timeout S       seconds to wait for each reply (default 5)\n"
		"  --serve           answer echo requests addressed to this peer\n"
		"  --serve-for S     stop serving after S seconds (default: forever)\n"
		"  --serve-count N   stop serving after N requests\n"
		"  --bar0-rw         access BAR0 with read/write on the VFIO device, not mmap (as\n"
		"                    when vfio-pci cannot map it: not page-aligned)\n",
		ECHO_MAX_PAYLOAD);
}

static double number(const char *text, const char *what)
{
	char *end;
	double value = strtod(text, &end);
	if (!*text || *end || value < 0) {
		fprintf(stderr, PROG ": error: %s must be a non-negative number, not '%s'\n", what, text);
		exit(2);
	}
	return value;
}

int main(int argc, char **argv)
{
	struct options opt = { .count = 3, .size = 16, .timeout = 5.0,
			       .serve_for = -1, .serve_count = -1 };
	static const struct option longopts[] = {
		{ "device", required_argument, 0, 'd' },
		{ "target", required_argument, 0, 't' },
		{ "count", required_argument, 0, 'c' },
		{ "size", required_argument, 0, 's' },
		{ "payload", required_argument, 0, 'p' },
		{ "timeout", required_argument, 0, 'T' },
		{ "serve", no_argument, 0, 'S' },
		{ "serve-for", required_argument, 0, 'F' },
		{ "serve-count", required_argument, 0, 'N' },
		{ "bar0-rw", no_argument, 0, 'R' },
		{ "help", no_argument, 0, 'h' },
		{ 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': opt.bdf = optarg; break;
		case 't':
			if (opt.ntargets == MAX_TARGETS) {
				fprintf(stderr, PROG ": error: at most %d targets\n", MAX_TARGETS);
				return 2;
			}
			opt.targets[opt.ntargets] = number(optarg, "--target");
			if (opt.targets[opt.ntargets++] >= ECHO_MAX_PEERS) {
				fprintf(stderr, PROG ": error: --target must be 0..%d\n",
					ECHO_MAX_PEERS - 1);
				return 2;
			}
			break;
		case 'c': opt.count = number(optarg, "--count"); break;
		case 's': opt.size = number(optarg, "--size"); break;
		case 'p':
			if (opt.npayloads == MAX_PAYLOADS) {
				fprintf(stderr, PROG ": error: at most %d payloads\n", MAX_PAYLOADS);
				return 2;
			}
			opt.payloads[opt.npayloads++] = optarg;
			break;
		case 'T': opt.timeout = number(optarg, "--timeout"); break;
		case 'S': opt.serve = 1; break;
		case 'F': opt.serve_for = number(optarg, "--serve-for"); opt.serve = 1; break;
		case 'N': opt.serve_count = number(optarg, "--serve-count"); opt.serve = 1; break;
		case 'R': opt.bar0_rw = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || (!opt.ntargets && !opt.serve)) {
		usage(stderr);
		return 2;
	}
	if (opt.size < 1 || opt.size > ECHO_MAX_PAYLOAD) {
		fprintf(stderr, PROG ": error: --size must be 1..%d\n", ECHO_MAX_PAYLOAD);
		return 2;
	}
	uint8_t payloads[MAX_PAYLOADS > 1 ? MAX_PAYLOADS : 1][ECHO_MAX_PAYLOAD];
	size_t lengths[MAX_PAYLOADS];
	for (int i = 0; i < opt.npayloads; i++) {
		int n = parse_hex(opt.payloads[i], payloads[i], ECHO_MAX_PAYLOAD);
		if (n < 0) {
			fprintf(stderr, PROG ": error: --payload must be 1..%d bytes of hex, not '%s'\n",
				ECHO_MAX_PAYLOAD, opt.payloads[i]);
			return 2;
		}
		lengths[i] = n;
	}

	struct device dev = { 0 };
	open_device(&dev, opt.bdf, opt.bar0_rw);
	if (inbox(dev.id) + ECHO_SLOT_SIZE > dev.shm_size || dev.id >= ECHO_MAX_PEERS)
		die("peer %u has no echo mailbox in %zu bytes of shared memory", dev.id, dev.shm_size);

	int failures = 0;
	long replies = 0;
	double started = now();
	if (opt.serve) {
		say("serving echo requests as peer %u", dev.id);
		serve_pending(&dev); /* requests made before we listened */
	}
	long total = opt.npayloads ? opt.npayloads : opt.count;
	int lost = 0;
	for (int t = 0; t < opt.ntargets && !lost; t++) {
		uint32_t target = opt.targets[t];
		long verified = 0;
		for (long n = 0; n < total && !lost; n++) {
			uint8_t generated[ECHO_MAX_PAYLOAD];
			const uint8_t *payload = generated;
			size_t len = opt.size;
			if (opt.npayloads) {
				payload = payloads[n];
				len = lengths[n];
			} else {
				for (size_t i = 0; i < len; i++)
					generated[i] = (uint8_t)(dev.id * 16 + n + i);
			}
			int result = request(&dev, &opt, target, n, payload, len);
			failures += result != 0;
			verified += result == 0;
			lost = result < 0;
		}
		say("peer %u: %ld of %ld replies verified", target, verified, total);
		replies += verified;
	}
	if (opt.serve && !lost) {
		double deadline = opt.serve_for >= 0 ? started + opt.serve_for : 1e300;
		while ((opt.serve_count < 0 || served < opt.serve_count) && now() < deadline)
			if (wait_irq(&dev, deadline))
				serve_pending(&dev);
		say("served %ld requests", served);
	}
	report_interrupts(&dev);
	say("done: %ld replies verified, %d failed, %ld requests served (%s)", replies, failures,
	    served, failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
