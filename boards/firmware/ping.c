/* Ping client: finds an echo peer, then sends it numbered requests and prints each
 * round trip in cycles (from the doorbell write to the reply's interrupt), the
 * reply's bytes and whether they are the request inverted. */
#include "ivshmem.h"
#include "soc.h"

#define PAYLOAD 8

static uint32_t own_id;

/* One request to `target`; returns the round trip in cycles, or 0 on timeout.
 * The reply is left in our inbox. */
static uint32_t ping_once(uint32_t target, uint32_t seq, uint32_t timeout)
{
    uint32_t box = ECHO_OUTBOX_BASE + (own_id << ECHO_SLOT_SHIFT);
    uint32_t reply = ECHO_INBOX_BASE + (own_id << ECHO_SLOT_SHIFT);
    shm_write32(reply + 4, 0);
    shm_write32(box, target);
    shm_write32(box + 8, 'p' | 'i' << 8 | 'n' << 16 | 'g' << 24);
    shm_write32(box + 12, seq);
    shm_write32(box + 4, PAYLOAD); /* the length goes last */
    uint32_t seen = ivshmem_events;
    alarm_fired = 0;
    uint32_t start = cycles();
    alarm_at(start + timeout);
    ivshmem_ring(target, 0);
    for (;;) {
        uint32_t irqs = irq_count;
        if (ivshmem_events != seen) {
            uint32_t end = cycles();
            seen = ivshmem_events;
            if (shm_read32(reply + 4))
                return end - start;
        }
        if (alarm_fired) {
            shm_write32(box + 4, 0); /* withdraw: a late echo must not answer it */
            return 0;
        }
        wait_irq(irqs);
    }
}

static int reply_ok(uint32_t target, uint32_t seq)
{
    uint32_t reply = ECHO_INBOX_BASE + (own_id << ECHO_SLOT_SHIFT);
    return shm_read32(reply) == target && shm_read32(reply + 4) == PAYLOAD &&
           shm_read32(reply + 8) == ~(uint32_t)('p' | 'i' << 8 | 'n' << 16 | 'g' << 24) &&
           shm_read32(reply + 12) == ~seq;
}

int main(void)
{
    own_id = ivshmem_init(0);
    uint32_t hz = MMIO32(SYS_BASE + SYS_CLOCK_HZ);
    puts("ping: peer ");
    put_dec(own_id);
    putc('\n');
    /* look for an echo peer: the first ID that answers */
    uint32_t target = own_id;
    while (target == own_id) {
        for (uint32_t t = 0; t < ECHO_SCAN; t++) {
            if (t != own_id && ping_once(t, 0, PING_TIMEOUT_CYCLES)) {
                target = t;
                break;
            }
        }
    }
    puts("ping: echo peer ");
    put_dec(target);
    puts(", clock ");
    put_dec(hz);
    puts(" Hz\n");
    uint32_t sent = 0, answered = 0, lo = 0xFFFFFFFFu, hi = 0;
    uint32_t sum = 0;
    for (uint32_t seq = 1; PING_COUNT == 0 || seq <= PING_COUNT; seq++) {
        uint32_t rtt = ping_once(target, seq, PING_TIMEOUT_CYCLES);
        sent++;
        puts("ping seq=");
        put_dec(seq);
        puts(" peer=");
        put_dec(target);
        if (!rtt) {
            puts(" timeout\n");
        } else {
            answered++;
            sum += rtt;
            lo = rtt < lo ? rtt : lo;
            hi = rtt > hi ? rtt : hi;
            puts(" rtt=");
            put_dec(rtt);
            puts(" cycles reply=");
            uint32_t reply = ECHO_INBOX_BASE + (own_id << ECHO_SLOT_SHIFT);
            for (uint32_t i = 0; i < PAYLOAD; i++)
                put_hex8(shm_read8(reply + 8 + i));
            puts(reply_ok(target, seq) ? " ok\n" : " BAD\n");
        }
        /* pause between pings, on the board long enough to read the console */
        alarm_fired = 0;
        alarm_at(cycles() + PING_GAP_CYCLES);
        for (uint32_t irqs = irq_count; !alarm_fired; irqs = irq_count)
            wait_irq(irqs);
    }
    puts("ping: ");
    put_dec(sent);
    puts(" sent, ");
    put_dec(answered);
    puts(" answered, rtt min ");
    put_dec(answered ? lo : 0);
    puts(" avg ");
    put_dec(answered ? sum / answered : 0);
    puts(" max ");
    put_dec(hi);
    puts(" cycles\nping: done\n");
    for (;;)
        wait_irq(irq_count);
}
