/* The echo service of docs/echo-protocol.md: on every event, answer every outbox
 * addressed to us (ascending requester ID) with the payload inverted.
 *
 * The main loop sleeps until the device's event latch is set and serves then,
 * without an interrupt: no trap entry, no registers saved, the reply a few hundred
 * cycles after the event (python -m bench.soc_profile). The console reports
 * the count of requests served when it reaches a power of two. */
#include "ivshmem.h"
#include "soc.h"

#define SLOT_WORDS ((1u << ECHO_SLOT_SHIFT) / 4)
#define MAILBOX(offset) ((volatile uint32_t *)(IVSHMEM_SHM + (offset)))

/* Answer every pending request of requesters 0..count-1; returns how many. */
static uint32_t serve(uint32_t own_id, uint32_t count)
{
    uint32_t answered = 0;
    volatile uint32_t *box = MAILBOX(ECHO_OUTBOX_BASE);
    volatile uint32_t *end = box + count * SLOT_WORDS;
    for (; box != end; box += SLOT_WORDS) {
        if (box[0] != own_id)
            continue;
        uint32_t length = box[1];
        if (!length)
            continue;
        if (length > ECHO_MAX_PAYLOAD)
            length = ECHO_MAX_PAYLOAD;
        /* the requester's inbox is as far from the inboxes as its outbox is from the outboxes */
        volatile uint32_t *reply = box + (ECHO_INBOX_BASE - ECHO_OUTBOX_BASE) / 4;
        reply[0] = own_id;
        volatile uint32_t *from = box + 2, *to = reply + 2;
        __asm__("" : "+r"(to)); /* one register: GCC would add the inbox offset per word */
        uint32_t words = length / 4;
        /* The whole words, straight-line from the right entry: on this CPU a loop's
         * branch and pointer steps cost more than the load and store they repeat. */
#define WORD(n) case n + 1: to[n] = ~from[n]; __attribute__((fallthrough));
        switch (words) {
            WORD(13) WORD(12) WORD(11) WORD(10) WORD(9) WORD(8) WORD(7)
            WORD(6) WORD(5) WORD(4) WORD(3) WORD(2) WORD(1) WORD(0)
        default:
            break;
        }
#undef WORD
        if (length & 3) { /* 1 to 3 bytes more, each its own byte store */
            uint32_t tail = ~from[words];
            volatile uint8_t *bytes = (volatile uint8_t *)(to + words);
            bytes[0] = (uint8_t)tail;
            if ((length & 3) > 1)
                bytes[1] = (uint8_t)(tail >> 8);
            if ((length & 3) > 2)
                bytes[2] = (uint8_t)(tail >> 16);
        }
        reply[1] = length; /* publishes the reply */
        box[1] = 0;
        ivshmem_ring(((uintptr_t)box - (uintptr_t)MAILBOX(ECHO_OUTBOX_BASE)) >> ECHO_SLOT_SHIFT, 0);
        answered++;
    }
    return answered;
}

int main(void)
{
    uint32_t own_id = ivshmem_id();
    events_enable(1u << IRQ_IVSHMEM);
    /* every requester whose inbox fits in the shared memory, up to ECHO_SCAN */
    uint32_t fit = (IVSHMEM_SHM_SIZE - ECHO_INBOX_BASE) >> ECHO_SLOT_SHIFT;
    uint32_t count = fit < ECHO_SCAN ? fit : ECHO_SCAN;
    puts("echo: peer ");
    put_dec(own_id);
    puts(" serving requesters 0..");
    put_dec(count - 1);
    putc('\n');
    uint32_t served = 0, report = 1;
    for (;;) {
        served += serve(own_id, count); /* first: requests made before we listened */
        if (served >= report) {
            report = served < 0x80000000u ? served * 2 : 0xFFFFFFFFu;
            puts("echo: served ");
            put_dec(served);
            putc('\n');
        }
        events_wait();
    }
}
