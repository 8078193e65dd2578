/* ivshmem-flat driver. */
#include "ivshmem.h"
#include "soc.h"

volatile uint32_t ivshmem_events;
static void (*event_handler)(void);

uint32_t ivshmem_init(void (*handler)(void))
{
    event_handler = handler;
    ivshmem_events = 0;
    /* INTMASK / INTSTATUS are reserved on ivshmem-flat: the IRQ is a pulse per
     * event, which the tile latches in PENDING; only that latch is unmasked. */
    irq_enable((1u << IRQ_IVSHMEM) | (1u << IRQ_ALARM));
    return ivshmem_id();
}

void ivshmem_interrupt(void)
{
    ivshmem_events++;
    if (event_handler)
        event_handler();
}
