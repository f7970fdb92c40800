-- a dump made without --databases: no CREATE DATABASE, no USE
DROP TABLE IF EXISTS `notes`;
CREATE TABLE `notes` (`id` int NOT NULL PRIMARY KEY, `body` text);
INSERT INTO `notes` VALUES (1,'first');
