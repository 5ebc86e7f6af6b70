module example.com/aiolock-consumer

go 1.19
