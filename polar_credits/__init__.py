"""polar-credits: durable usage-credit grants for Polar customers."""
