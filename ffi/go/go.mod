module aiolock

go 1.19
