/* The echo service of docs/echo-protocol.md: on every interrupt, answer every
 * outbox addressed to us (ascending requester ID) with the payload inverted. */
#include "ivshmem.h"
#include "soc.h"

static uint32_t own_id;
static uint32_t max_requester; /* requesters 0..max_requester-1 are scanned */
static volatile uint32_t served;

static void serve(void)
{
    for (uint32_t r = 0; r < max_requester; r++) {
        uint32_t box = ECHO_OUTBOX_BASE + (r << ECHO_SLOT_SHIFT);
        if (shm_read32(box) != own_id)
            continue;
        uint32_t length = shm_read32(box + 4);
        if (!length)
            continue;
        if (length > ECHO_MAX_PAYLOAD)
            length = ECHO_MAX_PAYLOAD;
        uint32_t reply = ECHO_INBOX_BASE + (r << ECHO_SLOT_SHIFT);
        shm_write32(reply, own_id);
        uint32_t i = 0;
        for (; i + 4 <= length; i += 4)
            shm_write32(reply + 8 + i, ~shm_read32(box + 8 + i));
        for (; i < length; i++)
            shm_write8(reply + 8 + i, (uint8_t)~shm_read8(box + 8 + i));
        shm_write32(reply + 4, length); /* publishes the reply */
        shm_write32(box + 4, 0);
        ivshmem_ring(r, 0);
        served++;
    }
}

int main(void)
{
    own_id = ivshmem_init(serve);
    /* every requester whose inbox fits in the shared memory, up to ECHO_SCAN */
    uint32_t fit = (IVSHMEM_SHM_SIZE - ECHO_INBOX_BASE) >> ECHO_SLOT_SHIFT;
    max_requester = fit < ECHO_SCAN ? fit : ECHO_SCAN;
    puts("echo: peer ");
    put_dec(own_id);
    puts(" serving requesters 0..");
    put_dec(max_requester - 1);
    putc('\n');
    serve(); /* requests made before we listened */
    uint32_t reported = 0;
    for (;;) {
        uint32_t seen = irq_count;
        uint32_t now = served;
        if (now != reported) {
            reported = now;
            puts("echo: served ");
            put_dec(now);
            putc('\n');
        }
        wait_irq(seen);
    }
}
